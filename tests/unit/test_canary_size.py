"""A split flag carries both its definitions: a canary can be several times its flag set's size, and one
past what a ConfigMap holds is refused before its step applies anything."""

from __future__ import annotations

import json

import pytest

from gitops.desired.configmaps import CONFIGMAP_SIZE_LIMIT
from gitops.desired.revision import load_revision
from gitops.desired.scope import AdminScope
from gitops.rollout.engine import desired_at_weight
from gitops.rollout.flag_canary import CanaryTooLarge

PAID = {"in": [{"var": "plan"}, ["pro", "enterprise"]]}


def flag_set(default: str, flags: int) -> dict:
    flag = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": default,
        "targeting": {"if": [PAID, "on", default]},
    }
    return {"flags": {f"feature-{index:05d}": dict(flag) for index in range(flags)}}


def revision(document: dict):
    files = {"sluice.yaml": b"targets: {namespaces: [flags]}\nflags: {namespace: flags}\n"}
    files["flags/features.json"] = json.dumps(document).encode()
    scope = AdminScope.of(["flags"], [])
    return load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, scope=scope)


def test_a_canary_past_what_a_configmap_holds_is_refused_naming_its_file():
    """600 flags whose default changes: Git's flag set is about a quarter of a ConfigMap, the canary at
    10% past a whole one. Before, the apiserver refused the step's write, and every retry's."""
    state = revision(flag_set("on", 600))
    published = next(iter(state.objects[0].content.data.values()))
    assert len(published.encode()) < CONFIGMAP_SIZE_LIMIT // 3
    baselines = {state.objects[0].key: flag_set("off", 600)}
    with pytest.raises(
        CanaryTooLarge, match=r"flags/features\.json: its canary at 10% would be .*setWeight 100"
    ):
        desired_at_weight(state, 10, baselines, population="5eed")


def test_a_canary_that_fits_is_built():
    state = revision(flag_set("on", 100))
    weighted = desired_at_weight(state, 10, {state.objects[0].key: flag_set("off", 100)}, population="5eed")
    text = next(iter(weighted.objects[0].content.data.values()))
    assert '"sluiceCanaryWeight": 10' in text and len(text.encode()) < CONFIGMAP_SIZE_LIMIT


def theme(default: str) -> dict:
    return {"state": "ENABLED", "variants": {"light": "#fff", "dark": "#000"}, "defaultVariant": default}


def two_sets(a_flags: dict, b_flags: dict):
    files = {"sluice.yaml": b"targets: {namespaces: [flags]}\nflags: {namespace: flags}\n"}
    files["flags/a.json"] = json.dumps({"flags": a_flags}).encode()
    files["flags/b.json"] = json.dumps({"flags": b_flags}).encode()
    scope = AdminScope.of(["flags"], [])
    return load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, scope=scope)


def test_a_flag_moving_between_two_flag_sets_flagd_serves_together_switches_at_100_only():
    """flagd merges the sets of one namespace by flag key. Split in each set on its own, a flag moving
    from a.json to b.json (and changing) was served by a only to the old side and by b only to the new
    side, and whichever flagd read last gave the other side the code's default for the whole canary.
    Now a keeps its old definition and b leaves it out until 100."""
    other = {"banner": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}}
    state = two_sets(other, {"theme": theme("dark")})
    by_file = {obj.origin: obj for obj in state.objects}
    baselines = {
        by_file["flags/a.json"].key: {"flags": {**other, "theme": theme("light")}},
        by_file["flags/b.json"].key: {"flags": {}},
    }
    weighted = desired_at_weight(state, 10, baselines, population="5eed")
    published = {obj.origin: obj.canary_document for obj in weighted.objects}
    assert published["flags/a.json"]["flags"]["theme"] == theme("light"), "a serves the old theme to all"
    assert "theme" not in published["flags/b.json"]["flags"], "b adds it at 100"
    at_full = {obj.origin: obj.flag_set.document for obj in desired_at_weight(state, 100, baselines).objects}
    assert "theme" not in at_full["flags/a.json"]["flags"] and at_full["flags/b.json"]["flags"][
        "theme"
    ] == theme("dark")


def test_a_flag_set_the_canary_leaves_as_it_is_is_as_validated_however_near_the_limit():
    """A flag set no flag of which changes is published as Git has it: validation (its text and room
    for the stamps within a ConfigMap) already said it fits. The canary's check once counted the room
    for the stamps twice and refused such a set, failing the whole step."""
    from gitops.desired.revision import STAMPS_ROOM, flag_set_json

    def padded(length: int) -> dict:
        variants = {"long": "x" * length, "short": "y"}
        return {"flags": {"copy": {"state": "ENABLED", "variants": variants, "defaultVariant": "short"}}}

    key_bytes = len("features.flagd.json")
    room = CONFIGMAP_SIZE_LIMIT - STAMPS_ROOM - key_bytes
    document = padded(room - len(flag_set_json(padded(0)).encode()) - 10)
    state = revision(document)  # valid: within the limit with room for the stamps
    weighted = desired_at_weight(state, 10, {state.objects[0].key: document}, population="5eed")
    assert weighted.objects[0].content.hash == state.objects[0].content.hash, "as Git has it: not refused"


def test_a_canary_too_large_to_build_names_its_file():
    """A flag whose canary would repeat a computed targeting past a ConfigMap is refused before it is
    built, by its file as well as its name."""
    targeting = {"cat": [{"var": "plan"}, *(f"-{index}" for index in range(300))]}
    big = {
        "state": "ENABLED",
        "variants": {f"v{index}": f"value {index}" for index in range(1_000)},
        "defaultVariant": "v0",
        "targeting": targeting,
    }
    changed = {**big, "variants": {**big["variants"], "v1": "changed"}}
    state = revision({"flags": {"big": changed}})
    with pytest.raises(CanaryTooLarge, match=r"^flags/features\.json: flag 'big'"):
        desired_at_weight(state, 50, {state.objects[0].key: {"flags": {"big": big}}}, population="5eed")


def one_set(b_flags: dict):
    files = {"sluice.yaml": b"targets: {namespaces: [flags]}\nflags: {namespace: flags}\n"}
    files["flags/b.json"] = json.dumps({"flags": b_flags}).encode()
    scope = AdminScope.of(["flags"], [])
    return load_revision({path: path for path in files}, lambda ids: {i: files[i] for i in ids}, scope=scope)


@pytest.mark.parametrize("dropped", [{"flags": {"theme": theme("light")}}, None], ids=["read", "unreadable"])
def test_a_flag_folded_from_a_dropped_set_into_a_kept_one_switches_at_100_only(dropped):
    """a.json is deleted and its flag added to b.json: flagd serves a's published set until its prune at
    100, so b leaves the flag out until then. A dropped set that cannot be read might hold any flag b
    gains: each of those waits for 100 too."""
    other = {"banner": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}}
    state = one_set({**other, "theme": theme("dark")})
    (kept,) = state.objects
    dropped_key = (kept.cluster, kept.namespace, "a")
    baselines = {kept.key: {"flags": other}, dropped_key: dropped}
    (weighted,) = desired_at_weight(state, 10, baselines, population="5eed").objects
    assert "theme" not in weighted.canary_document["flags"], "b adds it at 100"
    assert "banner" in weighted.canary_document["flags"]


def test_a_flag_set_whose_flags_do_not_change_is_published_as_git_has_it_at_every_weight():
    """A commit that changes a ConfigMap, or only a flag set's evaluators' layout, splits no flag: the
    flag set is published as Git has it, which the cluster holds already. Before, its canary stamped
    the weight into it, so every step rewrote it and restarted what reads it (flagd)."""
    state = revision(flag_set("on", 3))
    unchanged = state.objects[0]
    for weight in (0, 10, 50):
        weighted = desired_at_weight(state, weight, {unchanged.key: flag_set("on", 3)}, population="5eed")
        assert weighted.objects[0].content.hash == unchanged.content.hash
        assert weighted.objects[0].canary_document is None
    changed = desired_at_weight(state, 10, {unchanged.key: flag_set("off", 3)}, population="5eed")
    assert changed.objects[0].content.hash != unchanged.content.hash, "a changed flag is still split"
