"""What the flag catalog lists once a rollout is rolled back: each flag set as the rollback put it back, no
rollout, every user; rows from before the rollout kept with their own change time, the rest from the
change-log entry that published what is restored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from gitops.desired.flag_summary import effective_flags, flag_summary
from gitops.models import ApplyIntent, PublishedFlag, Rollout
from gitops.rollout.flag_catalog import (
    RestoredFlagSet,
    _Published,
    _rolled_back_sets,
    _RolledBack,
    _rows_after_rollback,
)
from gitops.rollout.rollback import _writes_flag_set
from gitops.vocabulary import FlagReach

ON_OFF = {"on": True, "off": False}
SPLIT = {
    "state": "ENABLED",
    "variants": ON_OFF,
    "defaultVariant": "off",
    "targeting": {"fractional": [["on", 20], ["off", 80]]},
}
WIDER = {**SPLIT, "targeting": {"fractional": [["on", 60], ["off", 40]]}}
PLAIN = {"state": "ENABLED", "variants": ON_OFF, "defaultVariant": "on"}
BANNER = {"state": "ENABLED", "variants": {"blue": "blue", "green": "green"}, "defaultVariant": "blue"}
CHECKOUT = ("flags", "checkout")
PROMO = ("flags", "promo")
STARTED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
V1_AT = STARTED - timedelta(days=40)  # what published the set before the rollout
V0_AT = STARTED - timedelta(days=90)  # an older change of one flag, which its row still holds
V1 = _Published("default", "c1" * 20, V1_AT, None)


def content(name: str, document: dict | str) -> dict:
    text = document if isinstance(document, str) else json.dumps(document)
    return {"data": {f"{name}.flagd.json": text}, "binaryData": {}, "labels": {}, "annotations": {}}


def restored(cluster: str, document: dict | str | None, *, kept: bool = False, name: str = "checkout"):
    before = None if document is None else content(name, document)
    return RestoredFlagSet(cluster, "flags", name, before, kept=kept)


def test_each_set_is_listed_as_the_first_cluster_put_back_that_published_it():
    old = {"flags": {"new-checkout": SPLIT}}
    sets = _rolled_back_sets([restored("a", None), restored("b", old), restored("c", {"flags": {}})])
    assert sets.documents == {CHECKOUT: old}, "a cluster that had none does not hide one that had it"
    assert sets.left == frozenset()


def test_a_set_no_cluster_had_before_goes_and_one_every_cluster_kept_stays_as_it_is():
    old = {"flags": {"new-checkout": SPLIT}}
    created = _rolled_back_sets([restored("a", None), restored("b", None)])
    assert created.documents == {CHECKOUT: None}, "the rollout created it; the rollback deleted it"
    refused = _rolled_back_sets([restored("a", old, kept=True), restored("b", old, kept=True)])
    assert (refused.documents, refused.left) == ({}, {CHECKOUT}), "every cluster keeps the rollout's"
    partly = _rolled_back_sets([restored("a", {"flags": {}}, kept=True), restored("b", old)])
    assert partly.documents == {CHECKOUT: old}, "what a cluster that refused holds is not what is back"


def test_content_that_is_no_flag_set_sluice_reads_leaves_its_rows_as_they_are():
    sets = _rolled_back_sets([restored("a", "{not json"), restored("b", None)])
    assert (sets.documents, sets.left) == ({}, {CHECKOUT})


def summary_row(rollout_pk: int | None, set_key, key: str, flag: dict, **fields) -> PublishedFlag:
    """A catalog row of ``flag``; ``rollout=`` an unsaved Rollout, for a row naming one with its phase."""
    summary = flag_summary(flag, effective_flags({"flags": {key: flag}})[key])
    values = {
        "source_id": 1,
        "cluster": "default",
        "namespace": set_key[0],
        "flag_set": set_key[1],
        "key": key,
        "key_hash": key,
        "state": summary.state,
        "variants": summary.variants,
        "default_variant": summary.default_variant,
        "targeting": summary.targeting,
        "definition_hash": summary.definition_hash,
        "changed_commit": V1.commit,
        "changed_at": V1_AT,
    }
    if "rollout" not in fields:
        values["rollout_id"] = rollout_pk
    return PublishedFlag(**{**values, **fields})


def catalog(*rows: PublishedFlag) -> dict:
    return {(row.namespace, row.flag_set, row.key): row for row in rows}


def rolled_back() -> Rollout:
    return Rollout(pk=9, source_id=1, phase=Rollout.Phase.ABORTED, created_at=STARTED)


def after(rows: dict, documents: dict, *, left=frozenset(), publications=None) -> tuple[dict, list]:
    """The catalog ``rows`` once rolled back, by flag; and the flag sets whose publication was looked up."""
    asked: list = []

    def published(set_key):
        asked.append(set_key)
        return (publications or {}).get(set_key, V1)

    listed = _rows_after_rollback(rolled_back(), _RolledBack(documents, frozenset(left)), rows, published)
    return catalog(*listed), asked


def test_flags_the_rollout_changed_added_or_removed_are_listed_as_restored():
    rollout = rolled_back()
    rows = catalog(
        summary_row(
            rollout.pk, CHECKOUT, "new-checkout", WIDER, changed_commit="c2" * 20, changed_at=STARTED
        ),
        summary_row(rollout.pk, CHECKOUT, "fresh", PLAIN, changed_at=STARTED),  # the rollout added it
        summary_row(rollout.pk, CHECKOUT, "beta", PLAIN, removed=True, changed_at=STARTED),
    )
    listed, asked = after(rows, {CHECKOUT: {"flags": {"new-checkout": SPLIT, "beta": PLAIN}}})
    assert set(listed) == {(*CHECKOUT, "new-checkout"), (*CHECKOUT, "beta")}
    checkout, beta = listed[(*CHECKOUT, "new-checkout")], listed[(*CHECKOUT, "beta")]
    assert checkout.targeting == "fractional 20/80 (on/off) on targetingKey"
    for row in (checkout, beta):
        assert (row.rollout_id, row.held_by_id, row.removed) == (None, None, False)
        assert (row.changed_commit, row.changed_at) == (V1.commit, V1_AT), "what published the restored set"
    assert set(asked) == {CHECKOUT}, "the change-log entry of the restored set"


def test_rows_from_before_the_rollout_keep_their_own_change_time():
    rollout = rolled_back()
    earlier = Rollout(pk=4, phase=Rollout.Phase.COMPLETED)
    untouched = summary_row(None, CHECKOUT, "new-checkout", SPLIT, rollout=earlier, changed_at=V0_AT)
    held = summary_row(None, CHECKOUT, "banner", BANNER, held_by_id=rollout.pk, changed_at=V0_AT)
    listed, asked = after(
        catalog(untouched, held), {CHECKOUT: {"flags": {"new-checkout": SPLIT, "banner": BANNER}}}
    )
    assert listed[(*CHECKOUT, "new-checkout")] is untouched
    banner = listed[(*CHECKOUT, "banner")]
    assert (banner.held_by_id, banner.changed_at, banner.rollout_id) == (None, V0_AT, None)
    assert asked == [], "nothing to look up"


def test_rows_that_do_not_say_what_users_had_before_the_rollout_are_written_again():
    aborted_before = Rollout(pk=3, phase=Rollout.Phase.ABORTED)
    rows = catalog(
        # An earlier rolled-back rollout's row: its page said 0% ("rolled back").
        summary_row(None, CHECKOUT, "new-checkout", SPLIT, rollout=aborted_before, changed_at=V0_AT),
        # Written again during the rollout (a lost row), from the rollout's own publication.
        summary_row(None, CHECKOUT, "banner", BANNER, changed_at=STARTED + timedelta(minutes=5)),
    )
    listed, _ = after(rows, {CHECKOUT: {"flags": {"new-checkout": SPLIT, "banner": BANNER}}})
    for key in ("new-checkout", "banner"):
        row = listed[(*CHECKOUT, key)]
        assert (row.rollout_id, row.changed_at) == (None, V1_AT), key


def test_a_set_the_rollback_deleted_leaves_and_a_set_git_dropped_is_listed_again():
    rollout = rolled_back()
    dropped = summary_row(
        rollout.pk, PROMO, "spring", PLAIN, removed=True, changed_commit="", changed_at=None
    )
    dropped.reach = FlagReach.AT_FULL
    created = summary_row(rollout.pk, ("flags", "new-set"), "novel", PLAIN, changed_at=STARTED)
    promo_at = _Published("default", "c0" * 20, V0_AT, 2)
    listed, _ = after(catalog(dropped, created), {("flags", "new-set"): None}, publications={PROMO: promo_at})
    assert set(listed) == {(*PROMO, "spring")}, "the set the rollout created went with its flags"
    spring = listed[(*PROMO, "spring")]
    assert (spring.removed, spring.rollout_id, spring.reach) == (False, None, FlagReach.SPLIT)
    assert (spring.changed_commit, spring.changed_at) == (promo_at.commit, V0_AT)


def test_a_set_every_cluster_kept_and_one_the_rollout_never_named_stay_as_they_are():
    rollout = rolled_back()
    kept = summary_row(rollout.pk, CHECKOUT, "new-checkout", WIDER, changed_at=STARTED)
    other = summary_row(None, PROMO, "spring", PLAIN)
    listed, asked = after(catalog(kept, other), {}, left={CHECKOUT})
    assert listed[(*CHECKOUT, "new-checkout")] is kept
    assert listed[(*PROMO, "spring")] is other
    assert asked == []


def intent(kind: str, *, manifest_kind: str | None, before: dict | None = None) -> ApplyIntent:
    labels = {"sluice.dev/kind": manifest_kind} if manifest_kind else {}
    manifest = {"metadata": {"labels": labels}} if manifest_kind else None
    return ApplyIntent(kind=kind, name="checkout", namespace="flags", manifest=manifest, before=before)


def test_a_rollback_looks_at_the_catalog_only_for_a_rollout_that_wrote_a_flag_set():
    assert _writes_flag_set(intent("ConfigMap", manifest_kind="flagset"))
    assert not _writes_flag_set(intent("ConfigMap", manifest_kind="configmap"))
    # A prune at 100: no manifest; what it deleted held the set's document.
    assert _writes_flag_set(
        intent("ConfigMap", manifest_kind=None, before=content("checkout", {"flags": {}}))
    )
    assert not _writes_flag_set(intent("ConfigMap", manifest_kind=None, before={"data": {"app.conf": "x"}}))
    assert not _writes_flag_set(intent("Deployment", manifest_kind=None, before=content("checkout", {})))
