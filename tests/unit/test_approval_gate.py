"""An administrator's approval floor: a gate the repository cannot remove, after a canary at most."""

import functools

import pytest

from gitops.desired.policy import Analysis, Pause, Policy, SetWeight
from gitops.desired.revision import DesiredState
from gitops.rollout.engine import largest_share, with_approval_gate
from tests.unit.test_waves_and_states import objects

GATE = Pause(None)


def spread(weight: int) -> int:
    """Every object has enough targets that a weight writes that share of them."""
    return weight


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
        # The repository's own gate in that place counts, and so does one before it.
        ((SetWeight(25), GATE, SetWeight(100)), (SetWeight(25), GATE, SetWeight(100))),
        ((GATE, SetWeight(25), SetWeight(100)), (GATE, SetWeight(25), SetWeight(100))),
        # Weight 0 changes nothing, so the first step that counts is the next one.
        ((SetWeight(0), SetWeight(20), SetWeight(100)), (SetWeight(0), SetWeight(20), GATE, SetWeight(100))),
        # A first step over 25% is no canary (99% covers every target of most objects): gated before it.
        ((SetWeight(99), SetWeight(100)), (GATE, SetWeight(99), SetWeight(100))),
        ((SetWeight(0), SetWeight(50), SetWeight(100)), (SetWeight(0), GATE, SetWeight(50), SetWeight(100))),
        ((SetWeight(26), SetWeight(100)), (GATE, SetWeight(26), SetWeight(100))),
    ],
)
def test_the_gate_comes_after_the_first_step_that_changes_anything(steps, expected):
    assert with_approval_gate(steps, spread) == expected


def revision(*groups: list) -> DesiredState:
    return DesiredState(Policy(), tuple(obj for group in groups for obj in group))


def test_a_configmap_with_one_target_changes_whole_at_any_weight_so_the_gate_comes_first():
    # setWeight 1 wrote every single-target ConfigMap in full before anyone approved.
    single = revision(objects("app", ["prod"]))
    assert largest_share(single, 1) == 100
    assert with_approval_gate((SetWeight(1), SetWeight(100)), functools.partial(largest_share, single)) == (
        GATE,
        SetWeight(1),
        SetWeight(100),
    )


def test_the_largest_share_of_any_object_decides_and_flag_sets_count_their_weight():
    four, two = objects("app", ["canary", "a", "b", "c"]), objects("db", ["canary", "a"])
    flags = objects("flags", ["flags"], kind="flagset")
    assert largest_share(revision(four), 25) == 25
    assert largest_share(revision(four, two), 25) == 50  # one of db's two targets
    assert largest_share(revision(four, flags), 20) == 25
    assert largest_share(revision(flags), 20) == 20
    assert largest_share(revision(four), 0) == 0
    wide = functools.partial(largest_share, revision(four, flags))
    assert with_approval_gate((SetWeight(25), SetWeight(100)), wide) == (SetWeight(25), GATE, SetWeight(100))
    narrow = functools.partial(largest_share, revision(four, two))
    assert with_approval_gate((SetWeight(25), SetWeight(100)), narrow) == (
        GATE,
        SetWeight(25),
        SetWeight(100),
    )


def test_without_the_revision_at_hand_the_gate_comes_before_the_first_change():
    # A retry copies the steps it was started with: a gate already there, after a canary the
    # revision allowed, stands; without one, the gate goes before the first change.
    assert with_approval_gate((SetWeight(25), SetWeight(100))) == (GATE, SetWeight(25), SetWeight(100))
    gated = (GATE, SetWeight(25), SetWeight(100))
    assert with_approval_gate(gated) == gated
    after = (SetWeight(25), GATE, SetWeight(100))
    assert with_approval_gate(after) == (GATE, SetWeight(25), GATE, SetWeight(100))


def test_a_revision_with_no_objects_left_is_gated_before_the_step_that_prunes_them_all():
    empty = functools.partial(largest_share, revision())
    assert with_approval_gate((SetWeight(100),), empty) == (GATE, SetWeight(100))
    assert with_approval_gate((SetWeight(10), SetWeight(100)), empty) == (SetWeight(10), GATE, SetWeight(100))
