"""The drift a stored plan counts for ``sluice_drift_objects`` is counted over every object, not over the
first 500 the plan keeps: a large held revision hid the drift beside it from the metric."""

from __future__ import annotations

from gitops.metrics import _drift_by_cluster
from gitops.plan import Action, Plan, PlanItem
from gitops.rollout.step import plan_snapshot


def test_drift_past_the_items_kept_is_counted_by_cluster():
    created = [PlanItem("a", "ns", f"cm-{n:04d}", Action.CREATE) for n in range(600)]
    drifted = [PlanItem("b", "ns", f"edited-{n}", Action.DRIFT) for n in range(7)]
    healed = [PlanItem("a", "ns", "healed", Action.SELF_HEAL)]
    snapshot = plan_snapshot(Plan("shop", "c0ffee", (*created, *drifted, *healed)), weight=100, applied=set())
    assert len(snapshot["items"]) == 500
    assert snapshot["drift_by_cluster"] == {"b": 7, "a": 1}
    assert _drift_by_cluster(snapshot) == {"b": 7, "a": 1}


def test_a_plan_stored_before_the_count_is_counted_from_its_items():
    stored = {"items": [{"cluster": "b", "action": "drift"}, {"action": "self-heal"}, {"action": "create"}]}
    assert _drift_by_cluster(stored) == {"b": 1, "": 1}
