"""A flag moving from one flag set to another is written where it arrives before it is taken away where it
leaves: the decision (``flag_canary.move_order``), which writes of a step's batch it orders
(``step.flag_move_order``), and how the batch then goes out (``step.intents_execute``). Before, both sets
went out in one batch, and flagd could read the one that lost the flag first and serve it from neither."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from gitops.cluster.apply import AppliedIntents
from gitops.errors import TemporaryError
from gitops.models import ApplyIntent
from gitops.rollout import step
from gitops.rollout.flag_canary import MoveOrder, move_order
from gitops.vocabulary import ChangeAction

FLAG = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}


def sides(before: str, after: str) -> tuple[set[str], set[str]]:
    """A set's flag keys before and after its write, one letter a flag."""
    return set(before), set(after)


# -- the decision ---------------------------------------------------------------------------------


def test_a_flag_moving_from_one_set_to_another_is_taken_away_only_after_it_is_added():
    order = move_order({"a": sides("tx", "x"), "b": sides("y", "ty")})

    assert order == MoveOrder({"a": 1}, {"a": frozenset({"b"})})


def test_a_deleted_set_whose_flag_a_kept_set_takes_over_goes_after_it():
    """A pruned set publishes no flags after its write."""
    order = move_order({"gone": sides("t", ""), "kept": sides("y", "ty")})

    assert order.rounds == {"gone": 1}


def test_flags_added_or_removed_for_good_order_nothing():
    """A flag new to the namespace, and one that leaves it: nobody serves them from neither set by the
    order of the writes, so the batch goes out whole, as before."""
    order = move_order({"a": sides("xy", "x"), "b": sides("z", "zn"), "c": sides("", "c")})
    assert order == MoveOrder({}, {})
    assert move_order({}) == MoveOrder({}, {})


def test_a_chain_of_moves_goes_in_as_many_rounds():
    """x moves from a to b, y from b to c: c first (adds y), then b (takes y away, adds x), then a."""
    order = move_order({"a": sides("x", ""), "b": sides("y", "x"), "c": sides("", "y")})

    assert order.rounds == {"b": 1, "a": 2}
    assert order.waits == {"b": frozenset({"c"}), "a": frozenset({"b"})}


def test_a_set_taking_away_flags_two_sets_add_waits_for_both():
    order = move_order({"a": sides("xy", ""), "b": sides("", "x"), "c": sides("", "y"), "d": sides("", "z")})

    assert order == MoveOrder({"a": 1}, {"a": frozenset({"b", "c"})})


def test_sets_that_swap_flags_cannot_be_ordered_and_keep_their_other_waits():
    """x moves a -> b and y moves b -> a: either order leaves one of them in neither for a moment, so
    the two are not ordered. a's wait for c, which adds the z it takes away, holds."""
    assert move_order({"a": sides("x", "y"), "b": sides("y", "x")}) == MoveOrder({}, {})
    ring = move_order({"a": sides("xz", "y"), "b": sides("y", "x"), "c": sides("", "z")})
    assert ring == MoveOrder({"a": 1}, {"a": frozenset({"c"})})


def test_a_longer_ring_is_left_unordered_too():
    order = move_order({"a": sides("x", "z"), "b": sides("y", "x"), "c": sides("z", "y")})

    assert order == MoveOrder({}, {})


# -- which writes of a batch --------------------------------------------------------------------------


def published(name: str, keys: str) -> dict[str, Any]:
    return {"data": {f"{name}.flagd.json": json.dumps({"flags": dict.fromkeys(keys, FLAG)}, indent=2)}}


def flag_set(
    name: str,
    before: str | None,
    after: str | None,
    *,
    namespace: str = "flags",
    cluster: str = "local",
    action: ChangeAction = ChangeAction.UPDATE,
) -> ApplyIntent:
    """A write of the flag set ``name`` (None: no object on that side), one letter a flag."""
    return ApplyIntent(
        cluster=cluster,
        namespace=namespace,
        name=name,
        action=action,
        manifest=None if after is None else {"metadata": {"name": name, "namespace": namespace}},
        before=None if before is None else published(name, before),
        after=None if after is None else published(name, after),
    )


def configmap(name: str, *, namespace: str = "flags") -> ApplyIntent:
    return ApplyIntent(
        cluster="local",
        namespace=namespace,
        name=name,
        action=ChangeAction.UPDATE,
        manifest={"metadata": {"name": name, "namespace": namespace}},
        before={"data": {"LEVEL": "info"}},
        after={"data": {"LEVEL": "debug"}},
    )


def test_at_100_the_set_losing_the_flag_waits_for_the_one_gaining_it_and_nothing_else_waits():
    intents = [
        configmap("app"),
        flag_set("a", "tx", "x"),  # loses t
        flag_set("b", "y", "ty"),  # gains t
        flag_set("c", "z", "zw", namespace="other"),
    ]

    assert step.flag_move_order(intents) == MoveOrder({1: 1}, {1: frozenset({2})})


def test_the_prune_of_a_deleted_sets_configmap_waits_for_the_set_taking_its_flag_over():
    intents = [flag_set("a", "t", None, action=ChangeAction.DELETE), flag_set("b", "y", "ty")]

    assert step.flag_move_order(intents) == MoveOrder({0: 1}, {0: frozenset({1})})


def test_a_flag_leaving_one_namespace_and_arriving_in_another_orders_nothing():
    """flagd serves the sets of one flags namespace together; two namespaces are two flagd's."""
    intents = [flag_set("a", "t", ""), flag_set("b", "", "t", namespace="elsewhere")]
    assert step.flag_move_order(intents) == MoveOrder({}, {})
    other_cluster = [flag_set("a", "t", ""), flag_set("b", "", "t", cluster="member-1")]
    assert step.flag_move_order(other_cluster) == MoveOrder({}, {})


def test_a_first_apply_or_one_flag_set_a_namespace_parses_nothing(monkeypatch):
    """The cold apply's hot path: no flag set of it held flags before, or one set is written in each
    namespace, so no document is read at all."""

    def parsed(text: Any) -> None:
        raise AssertionError("a flag set was parsed")

    monkeypatch.setattr(step, "live_document", parsed)
    creates = [flag_set(f"s{index}", None, "x", action=ChangeAction.CREATE) for index in range(50)]
    assert step.flag_move_order([configmap("app"), *creates]) == MoveOrder({}, {})
    one_each = [flag_set("a", "x", "", namespace=f"ns-{index}") for index in range(50)]
    assert step.flag_move_order(one_each) == MoveOrder({}, {})


def test_a_configmap_that_is_not_a_flag_set_is_never_ordered():
    """Its data holds no key named for a flag set of its name."""
    looks_alike = ApplyIntent(
        cluster="local",
        namespace="flags",
        name="app",
        action=ChangeAction.UPDATE,
        before={"data": {"other.flagd.json": json.dumps({"flags": {"t": FLAG}})}},
        after={"data": {}},
    )
    assert step.flag_move_order([looks_alike, flag_set("b", "y", "ty")]) == MoveOrder({}, {})


# -- the batch as it goes out -------------------------------------------------------------------------


class FakeCluster:
    """Applies what it is sent, in calls the test reads back; refuses the names in ``refuse``, and
    answers nothing while ``down``."""

    def __init__(self, *, refuse: Sequence[str] = (), down: bool = False) -> None:
        self.refuse = set(refuse)
        self.down = down
        self.calls: list[list[str]] = []
        self.log: list[str] = []  # sends and records, in the order they happened

    def apply(self, intents: Sequence[ApplyIntent], **options: Any) -> AppliedIntents:
        names = [intent.name for intent in intents]
        self.calls.append(names)
        self.log.append(f"send {' '.join(names)}")
        if self.down:
            return AppliedIntents(unreachable={"local": TemporaryError("connection refused")})
        errors = [("refused by a webhook" if intent.name in self.refuse else None) for intent in intents]
        return AppliedIntents(list(intents), errors)

    def record(self, intents: Sequence[ApplyIntent], errors: Sequence[str | None]) -> list[str]:
        self.log.append(f"log {' '.join(intent.name for intent in intents)}")
        for intent, error in zip(intents, errors, strict=True):
            intent.status = ApplyIntent.Status.FAILED if error else ApplyIntent.Status.DONE
        return [f"{intent.name}: {error}" for intent, error in zip(intents, errors, strict=True) if error]


@pytest.fixture
def fake(monkeypatch) -> FakeCluster:
    cluster = FakeCluster()
    monkeypatch.setattr(step, "intents_apply_everywhere", cluster.apply)
    monkeypatch.setattr(step, "changes_record", cluster.record)
    return cluster


def test_a_batch_without_moving_flags_goes_out_whole_in_one_call(fake):
    intents = [configmap("app"), flag_set("a", "x", "xy"), flag_set("b", "z", "")]

    executed = step.intents_execute(intents)

    assert fake.calls == [["app", "a", "b"]], "one batch, as before"
    assert fake.log == ["send app a b", "log app a b"]
    assert executed == step.Executed()


def test_the_set_gaining_a_flag_is_stored_and_logged_before_the_one_losing_it_is_sent(fake):
    intents = [flag_set("a", "tx", "x"), configmap("app"), flag_set("b", "y", "ty")]

    executed = step.intents_execute(intents)

    assert fake.log == ["send app b", "log app b", "send a", "log a"]
    assert {intent.status for intent in intents} == {ApplyIntent.Status.DONE}
    assert executed == step.Executed()


def test_a_refused_gain_keeps_the_flag_where_it_is_and_fails_the_step(fake):
    fake.refuse = {"b"}
    intents = [flag_set("a", "tx", "x"), flag_set("b", "y", "ty")]

    executed = step.intents_execute(intents)

    assert fake.calls == [["b"]], "a, which takes the flag away, is never sent"
    assert [intent.status for intent in intents] == [ApplyIntent.Status.FAILED] * 2
    assert executed.failures[0] == "b: refused by a webhook"
    assert executed.failures[1].startswith("a: not sent: the write of flag set flags/b, which adds flags")


def test_a_cluster_that_stops_answering_leaves_both_pending_and_a_later_pass_orders_them_again(fake):
    fake.down = True
    intents = [flag_set("a", "tx", "x"), flag_set("b", "y", "ty")]

    executed = step.intents_execute(intents)

    assert fake.calls == [["b"]]
    assert [intent.status for intent in intents] == [ApplyIntent.Status.PENDING] * 2, "neither logged"
    assert set(executed.unreachable) == {"local"}

    # The pending intents, finished by the next pass (``intents_finish_pending``), go in the same order.
    fake.down, fake.calls, fake.log = False, [], []
    step.intents_execute(intents)
    assert fake.log == ["send b", "log b", "send a", "log a"]


def test_a_pass_resuming_after_the_gain_sends_the_loss_alone(fake):
    """A crash between the two rounds left the gain stored (logged, or found in effect by the next
    pass, ``_still_ours``) and the loss pending: the loss goes out alone, its flag already in b."""
    executed = step.intents_execute([flag_set("a", "tx", "x")])

    assert fake.calls == [["a"]]
    assert executed == step.Executed()


def test_a_chain_goes_out_in_three_rounds(fake):
    intents = [flag_set("a", "x", ""), flag_set("b", "y", "x"), flag_set("c", "", "y")]

    step.intents_execute(intents)

    assert fake.calls == [["c"], ["b"], ["a"]]
