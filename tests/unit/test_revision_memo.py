"""What a pass remembers from the last one: the same objects for unchanged files, plan items copied right."""

from __future__ import annotations

from dataclasses import replace

from gitops.desired.revision import DesiredState, ParseCache, load_revision
from gitops.desired.scope import AdminScope
from gitops.plan.planner import Action, PlanItem, _with_desired

POLICY = b"targets:\n  - {cluster: default, namespaces: [shop, cart]}\n"
SCOPE = AdminScope.of(["default/*"], [], known_clusters=("default",))


def configmap(name: str, value: str, namespace: str = "") -> bytes:
    where = f"\n  namespace: {namespace}" if namespace else ""
    text = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{where}\ndata:\n  V: '{value}'\n"
    return text.encode()


def load(files: dict[str, bytes], cache: ParseCache) -> DesiredState:
    # Blob ids are the content, as Git's are: an unchanged file keeps its id.
    blobs = {content.hex(): content for content in files.values()}
    return load_revision(
        {path: content.hex() for path, content in files.items()},
        lambda ids: {blob: blobs[blob] for blob in ids},
        scope=SCOPE,
        cache=cache,
    )


def test_an_unchanged_file_gives_the_very_same_objects_and_a_changed_one_new_ones():
    cache = ParseCache()
    files = {
        "sluice.yaml": POLICY,
        "configmaps/a.yaml": configmap("a", "1"),  # no namespace: one object per target namespace
        "configmaps/b.yaml": configmap("b", "1", "cart"),
    }
    first = load(files, cache)
    second = load({**files, "configmaps/b.yaml": configmap("b", "2", "cart")}, cache)

    before, after = first.by_key(), second.by_key()
    assert (
        set(before)
        == set(after)
        == {
            ("default", "shop", "a"),
            ("default", "cart", "a"),
            ("default", "cart", "b"),
        }
    )
    assert after[("default", "shop", "a")] is before[("default", "shop", "a")]
    assert after[("default", "cart", "a")] is before[("default", "cart", "a")]
    assert after[("default", "cart", "b")] is not before[("default", "cart", "b")]
    assert after[("default", "cart", "b")].content.data == {"V": "2"}


def test_a_policy_that_moves_the_targets_makes_objects_for_the_new_targets():
    cache = ParseCache()
    files = {"sluice.yaml": POLICY, "configmaps/a.yaml": configmap("a", "1")}
    load(files, cache)
    moved = load({**files, "sluice.yaml": b"targets:\n  - {cluster: default, namespaces: [cart]}\n"}, cache)

    (only,) = moved.objects
    assert (only.key, only.rank) == (("default", "cart", "a"), 0)


def test_a_remembered_plan_item_copied_for_another_object_equals_replace():
    state = load({"sluice.yaml": POLICY, "configmaps/a.yaml": configmap("a", "1")}, ParseCache())
    first, second = state.objects
    item = PlanItem(
        "default", "shop", "a", Action.UNCHANGED, desired=first, before=first.content, reason="same"
    )

    copied = _with_desired(item, second)

    assert copied == replace(item, desired=second)
    assert copied.desired is second
    assert vars(copied) == vars(replace(item, desired=second))
    assert item.desired is first, "the remembered item is left as it was"
