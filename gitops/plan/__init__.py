"""Plan: desired state against the live cluster, key by key. Pure: no Django, no cluster."""

from gitops.plan.diff import DiffItem, DiffOp, diff_content, summarize_binary
from gitops.plan.planner import (
    ACTIONABLE,
    Action,
    Plan,
    PlanItem,
    PlanMemo,
    Verdict,
    decide,
    drift_count,
    out_of_sync,
    plan,
)
from gitops.plan.stamps import LiveStamp, settles, stamp_of

__all__ = [
    "ACTIONABLE",
    "Action",
    "DiffItem",
    "DiffOp",
    "LiveStamp",
    "Plan",
    "PlanItem",
    "PlanMemo",
    "Verdict",
    "decide",
    "diff_content",
    "drift_count",
    "out_of_sync",
    "plan",
    "settles",
    "stamp_of",
    "summarize_binary",
]
