"""An administrator's approval floor: a gate the repository cannot remove, after the first step."""

import pytest

from gitops.desired.policy import Analysis, Pause, SetWeight
from gitops.rollout.engine import with_approval_gate

GATE = Pause(None)


@pytest.mark.parametrize(
    "steps, expected",
    [
        # No rollout section: one step to 100%, so nothing may go out before approval.
        ((SetWeight(100),), (GATE, SetWeight(100))),
        # A canary first step goes out; the gate follows it.
        ((SetWeight(25), SetWeight(100)), (SetWeight(25), GATE, SetWeight(100))),
        # A timed pause is not a gate.
        (
            (SetWeight(10), Pause(30), SetWeight(100)),
            (SetWeight(10), GATE, Pause(30), SetWeight(100)),
        ),
        # An analysis is not a gate either.
        (
            (SetWeight(10), Analysis("http://a/"), SetWeight(100)),
            (SetWeight(10), GATE, Analysis("http://a/"), SetWeight(100)),
        ),
        # The repository's own gate in that place counts.
        ((SetWeight(25), GATE, SetWeight(100)), (SetWeight(25), GATE, SetWeight(100))),
        # Weight 0 changes nothing, so the first step that counts is the next one.
        ((SetWeight(0), SetWeight(20), SetWeight(100)), (SetWeight(0), SetWeight(20), GATE, SetWeight(100))),
        # A first step over 25% is no canary (99% covers every target of most objects): gated before it.
        ((SetWeight(99), SetWeight(100)), (GATE, SetWeight(99), SetWeight(100))),
        ((SetWeight(0), SetWeight(50), SetWeight(100)), (SetWeight(0), GATE, SetWeight(50), SetWeight(100))),
        ((SetWeight(26), SetWeight(100)), (GATE, SetWeight(26), SetWeight(100))),
    ],
)
def test_the_gate_comes_after_the_first_step_that_changes_anything(steps, expected):
    assert with_approval_gate(steps) == expected
