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

__all__ = [
    "ACTIONABLE",
    "Action",
    "DiffItem",
    "DiffOp",
    "Plan",
    "PlanItem",
    "PlanMemo",
    "Verdict",
    "decide",
    "diff_content",
    "drift_count",
    "out_of_sync",
    "plan",
    "summarize_binary",
]
