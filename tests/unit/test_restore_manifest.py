"""What a rollback's restore applies (``ApplyIntent.restoring``), from the rollout's first intent and the
object as it is now: the kind label a pruned flag set comes back with, and another field manager's keys
left out of the forced apply."""

from __future__ import annotations

from gitops.desired.content import KIND_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SOURCE_LABEL
from gitops.models import ApplyIntent, Revision, Rollout, Source
from gitops.vocabulary import ChangeAction

PREVIOUS = "a1" * 20


def rollout() -> Rollout:
    return Rollout(source=Source(name="shop"), revision=Revision(commit="b2" * 20), step_index=2, weight=100)


def first_intent(name: str, *, action: ChangeAction, before: dict, after: dict | None, manifest=None):
    return ApplyIntent(
        cluster="default",
        namespace="flags",
        name=name,
        action=action,
        before=before,
        after=after,
        manifest=manifest,
        before_commit=PREVIOUS,
        before_content_hash="c" * 32,
        origin="flags/checkout.flagd.json",
    )


def test_a_pruned_flag_set_comes_back_labelled_a_flag_set():
    """A prune has no manifest, and the restore labelled what it brought back a ConfigMap: the live cache
    then never settled it, and a later canary no longer saw it as a flag set."""
    held = {"data": {"checkout.flagd.json": '{"flags": {}}'}}
    pruned = first_intent("checkout", action=ChangeAction.DELETE, before=held, after=None)

    restore = ApplyIntent.restoring(rollout(), pruned, None, actor="sluice")

    assert restore is not None and restore.manifest is not None
    assert restore.manifest["metadata"]["labels"][KIND_LABEL] == "flagset"
    plain = first_intent("app", action=ChangeAction.DELETE, before={"data": {"A": "1"}}, after=None)
    restored = ApplyIntent.restoring(rollout(), plain, None, actor="sluice")
    assert restored is not None and restored.manifest["metadata"]["labels"][KIND_LABEL] == "configmap"


def managed_fields(*entries: tuple[str, str, list[str]]) -> list[dict]:
    return [
        {"manager": manager, "operation": operation, "fieldsV1": {"f:data": {f"f:{key}": {} for key in keys}}}
        for manager, operation, keys in entries
    ]


def test_the_restore_applies_the_keys_the_rollout_wrote_and_leaves_another_managers_alone():
    live = {
        "metadata": {
            "name": "app",
            "namespace": "flags",
            "managedFields": managed_fields(("sluice", "Apply", ["A"]), ("injector", "Update", ["ca.crt"])),
        },
        "data": {"A": "2", "ca.crt": "rotated"},
    }
    first = first_intent(
        "app",
        action=ChangeAction.UPDATE,
        before={"data": {"A": "1", "ca.crt": "stale"}},
        after={"data": {"A": "2"}},
    )

    restore = ApplyIntent.restoring(rollout(), first, live, actor="sluice")

    assert restore is not None
    assert restore.manifest["data"] == {"A": "1"}, "the forced apply names no key another manager holds"
    assert restore.after["data"] == {"A": "1", "ca.crt": "rotated"}, "what the object holds afterwards"
    assert [change["key"] for change in restore.diff] == ["A"]
    # A key the rollout wrote is put back even when someone edited it since (their edit took it over).
    edited = {
        **live,
        "metadata": {
            **live["metadata"],
            "managedFields": managed_fields(
                ("injector", "Update", ["ca.crt"]), ("kubectl-edit", "Update", ["A"])
            ),
        },
    }
    again = ApplyIntent.restoring(rollout(), first, edited, actor="sluice")
    assert again is not None and again.manifest["data"] == {"A": "1"}


def test_a_restore_recreates_an_immutable_configmap_only_when_its_data_changes():
    """Labels and annotations change in place on an immutable ConfigMap, as the forward plan changes
    them; the restore deleted and created it for a label alone, and pods starting meanwhile found no
    ConfigMap."""
    first = first_intent(
        "app",
        action=ChangeAction.UPDATE,
        before={"data": {"A": "1"}, "labels": {"tier": "old"}, "immutable": True},
        after={"data": {"A": "1"}, "labels": {"tier": "new"}, "immutable": True},
    )
    live = {
        "metadata": {"name": "app", "namespace": "flags", "labels": {"tier": "new"}},
        "data": {"A": "1"},
        "immutable": True,
    }

    relabelled = ApplyIntent.restoring(rollout(), first, live, actor="sluice")

    assert relabelled is not None and not relabelled.recreate
    changed = {**live, "data": {"A": "2"}}
    restored = ApplyIntent.restoring(rollout(), first, changed, actor="sluice")
    assert restored is not None and restored.recreate


def created_live(source: str | None) -> dict:
    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, SOURCE_LABEL: source} if source else {}
    metadata = {"name": "new", "namespace": "flags", "uid": "u-1", "resourceVersion": "42", "labels": labels}
    return {"metadata": metadata, "data": {"A": "1"}}


def test_a_restore_deleting_a_created_object_is_conditioned_on_the_rollbacks_read_of_it_as_the_sources():
    created = first_intent("new", action=ChangeAction.CREATE, before=None, after={"data": {"A": "1"}})

    delete = ApplyIntent.restoring(rollout(), created, created_live("shop"), actor="sluice")

    assert delete is not None and delete.manifest is None, "a delete"
    assert (delete.live_uid, delete.live_version) == ("u-1", "42")
    # Read as another's (or nobody's): no condition (the rollback leaves such an object alone before it
    # asks for a restore: this is a second guard), so a delete would read it first and refuse.
    for holder in ("someone-else", None):
        other = ApplyIntent.restoring(rollout(), created, created_live(holder), actor="sluice")
        assert other is not None and (other.live_uid, other.live_version) == ("", "")
    # A restore that applies content back has no condition: it is an apply.
    updated = first_intent("new", action=ChangeAction.UPDATE, before={"data": {"A": "0"}}, after={"data": {}})
    put_back = ApplyIntent.restoring(rollout(), updated, created_live("shop"), actor="sluice")
    assert put_back is not None and put_back.manifest is not None and put_back.live_uid == ""
