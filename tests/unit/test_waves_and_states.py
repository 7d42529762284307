"""Pure canary math (which targets a weight covers) and the one-word state of a source."""

import pytest

from gitops.desired.content import Content
from gitops.desired.policy import Policy
from gitops.desired.revision import DesiredObject, DesiredState
from gitops.models import Revision, Rollout, Source
from gitops.rollout.engine import held_keys, target_cutoff
from gitops.selectors import sync_state


@pytest.mark.parametrize(
    "weight, targets, cutoff",
    [
        (0, 4, 0),
        (1, 4, 1),  # a single target changes at the first weight above 0
        (25, 4, 1),
        (26, 4, 2),
        (50, 4, 2),
        (75, 4, 3),
        (99, 4, 4),
        (100, 4, 4),
        (10, 1, 1),
        (33, 3, 1),
        (34, 3, 2),
        (50, 1000, 500),
        (1, 1000, 10),
    ],
)
def test_target_cutoff_is_the_ceiling_of_the_share(weight, targets, cutoff):
    assert target_cutoff(weight, targets) == cutoff


def objects(group: str, namespaces: list, kind: str = "configmap") -> list[DesiredObject]:
    """One object per target; a target is a namespace of the default cluster or (cluster, namespace)."""
    return [
        DesiredObject(
            ns, group, Content(data={"v": "1"}), f"{group}.yaml", 1, kind, group, rank, cluster=cluster
        )
        for rank, (cluster, ns) in enumerate(
            target if isinstance(target, tuple) else ("default", target) for target in namespaces
        )
    ]


def test_held_keys_keep_the_later_targets_of_each_manifest_in_policy_order():
    state = DesiredState(
        Policy(),
        (
            *objects("app", ["canary", "a", "b", "c"]),
            *objects("db", ["canary", "a"]),
            *objects("flags", ["flags"], kind="flagset"),
        ),
    )
    d = "default"
    assert held_keys(state, 25) == {(d, "a", "app"), (d, "b", "app"), (d, "c", "app"), (d, "a", "db")}
    assert held_keys(state, 50) == {(d, "b", "app"), (d, "c", "app"), (d, "a", "db")}
    assert held_keys(state, 51) == {(d, "c", "app")}
    assert held_keys(state, 100) == frozenset()
    # Flag sets are never held: their canary is a share of users, not of targets.
    assert all(name != "flags" for _, _, name in held_keys(state, 0))


def source(**fields) -> Source:
    return Source(name="s", **fields)


def rollout(phase: str) -> Rollout:
    return Rollout(phase=phase)


@pytest.mark.parametrize(
    "source_fields, outcome, active, last, state",
    [
        ({}, None, None, None, "OutOfSync"),
        ({}, Revision.Outcome.REJECTED, None, None, "Error"),
        ({"last_error": "cannot fetch"}, Revision.Outcome.APPLIED, None, "Completed", "Error"),
        ({}, Revision.Outcome.VALID, "Progressing", None, "Progressing"),
        ({}, Revision.Outcome.VALID, "Paused", None, "Paused"),
        ({}, Revision.Outcome.VALID, None, "Aborted", "Degraded"),
        ({}, Revision.Outcome.VALID, None, "Failed", "Degraded"),
        ({}, Revision.Outcome.APPLIED, None, "Completed", "Synced"),
        ({"last_plan": {"summary": {"drift": 1}}}, Revision.Outcome.APPLIED, None, "Completed", "OutOfSync"),
        (
            {"last_plan": {"summary": {"conflict": 2}}},
            Revision.Outcome.APPLIED,
            None,
            "Completed",
            "OutOfSync",
        ),
        ({"last_plan": {"summary": {"unchanged": 9}}}, Revision.Outcome.APPLIED, None, "Completed", "Synced"),
    ],
)
def test_sync_state(source_fields, outcome, active, last, state):
    revision = Revision(outcome=outcome) if outcome else None
    assert (
        sync_state(
            source(**source_fields),
            revision,
            rollout(active) if active else None,
            rollout(last or active) if (last or active) else None,
        )
        == state
    )
