"""What a pass reports as its errors (``reconcile._outcome_into``): the refusals met before its rollout
moved are kept, each refusal is said once, and clusters out of reach come last."""

from __future__ import annotations

from types import SimpleNamespace

from gitops.reconcile import SyncResult, _outcome_into
from gitops.rollout.state import StepOutcome
from gitops.vocabulary import Outcome

OPEN = SimpleNamespace(held=None)  # as GateWatch reads a source with no freeze and no window closed


def test_earlier_refusals_are_kept_and_a_refusal_met_twice_is_said_once() -> None:
    result = SyncResult("shop", Outcome.UNCHANGED, errors=["restore of a refused", "write of b refused"])
    step = StepOutcome(
        Outcome.FAILED,
        {"update": 2},
        ["write of b refused", "write of c refused"],
        unreachable={"member-2": "connect timed out"},
    )

    _outcome_into(result, step, None, OPEN)  # type: ignore[arg-type]

    assert result.outcome is Outcome.FAILED
    assert result.summary == {"update": 2}
    assert result.errors == [
        "restore of a refused",
        "write of b refused",
        "write of c refused",
        "cluster member-2 unreachable: connect timed out",
    ]


def test_a_queued_head_is_reported_queued_with_the_rollouts_errors() -> None:
    result = SyncResult("shop", Outcome.UNCHANGED)

    _outcome_into(result, StepOutcome(Outcome.PAUSED, failures=["x refused"]), Outcome.QUEUED, OPEN)  # type: ignore[arg-type]

    assert (result.outcome, result.errors) == (Outcome.QUEUED, ["x refused"])
