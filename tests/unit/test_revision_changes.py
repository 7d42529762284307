"""Loading a commit from its changed files (``load_revision_changes``) gives what loading the whole tree does.

A worker keeps the index of the last valid revision it loaded; the next commit is loaded from
``git diff-tree``'s changed paths alone. Whatever the change, the result must be the whole load's
(the same objects, in the same order), or None, after which the whole tree is loaded and reports
errors as it always did. A random walk of edits checks that, on both sides of every limit.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import replace

import pytest

from gitops.desired.errors import RevisionRejected
from gitops.desired.limits import Limits
from gitops.desired.revision import (
    FileChange,
    ParseCache,
    RevisionIndex,
    load_revision_changes,
    load_revision_indexed,
)
from gitops.desired.scope import AdminScope

POLICY = (
    b"targets:\n  namespaces: [canary, team-a, team-b]\n"
    b"flags:\n  namespace: flags\n"
    b"allowedNamespaces: [canary, 'team-*', flags]\n"
)
SCOPE = AdminScope.of(["canary", "team-*", "flags"], [])
NAMES = [f"cm-{i}" for i in range(12)]
NAMESPACES = [None, "canary", "team-a", "team-b", "forbidden"]


def configmap(name: str, value: str, namespace: str | None) -> bytes:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{ns}\ndata:\n  v: '{value}'\n".encode()


def random_file(rng: random.Random) -> tuple[str, bytes]:
    """A file Sluice reads (a manifest, two manifests, a flag set, a broken one) or one it ignores."""
    roll = rng.random()
    name, namespace, value = rng.choice(NAMES), rng.choice(NAMESPACES), str(rng.randrange(5))
    if roll < 0.55:
        return f"configmaps/{rng.choice('abcdefgh')}.yaml", configmap(name, value, namespace)
    if roll < 0.7:
        two = configmap(name, value, namespace) + b"---\n" + configmap(rng.choice(NAMES), value, "team-a")
        return f"configmaps/multi-{rng.choice('xy')}.yml", two
    if roll < 0.85:
        letter = rng.choice("pq")
        # Now and then the key the other file may hold: a key in two flag sets is refused.
        key = "shared" if rng.random() < 0.2 else f"f-{letter}"
        flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
        flag["defaultVariant"] = rng.choice(["on", "off"])
        return f"flags/{letter}.json", json.dumps({"flags": {key: flag}}).encode()
    if roll < 0.93:
        return f"configmaps/{rng.choice('abcdefgh')}.yaml", b"metadata: [unclosed\n"
    return "configmaps/README.md", value.encode() * rng.randrange(1, 50)


class Tree:
    """Files addressed by blob id, like a Git tree: (blob id, size) per path."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)

    def listing(self) -> dict[str, tuple[str, int]]:
        return {path: (self.blob(content), len(content)) for path, content in self.files.items()}

    @staticmethod
    def blob(content: bytes) -> str:
        return f"{abs(hash(content)):040x}"[:40]

    def read_blobs(self, blob_ids: list[str]) -> dict[str, bytes]:
        by_id = {self.blob(content): content for content in self.files.values()}
        return {blob: by_id[blob] for blob in blob_ids}


def load_whole(tree: Tree, limits: Limits, cache: ParseCache) -> tuple[object, RevisionIndex] | None:
    listing = tree.listing()
    try:
        return load_revision_indexed(
            {path: blob for path, (blob, _) in listing.items()},
            tree.read_blobs,
            sizes={path: size for path, (_, size) in listing.items()},
            limits=limits,
            cache=cache,
            scope=SCOPE,
        )
    except RevisionRejected:
        return None


def changes_between(
    before: Mapping[str, tuple[str, int]], after: Mapping[str, tuple[str, int]]
) -> dict[str, FileChange]:
    """What ``git diff-tree`` reports: every path added, changed or gone."""
    return {
        path: after.get(path) for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    }


def same_index(left: RevisionIndex, right: RevisionIndex) -> None:
    assert left.desired.objects == right.desired.objects
    assert [obj.key for obj in left.desired.objects] == [obj.key for obj in right.desired.objects]
    assert left.desired.policy == right.desired.policy
    assert dict(left.tree) == dict(right.tree)
    assert (left.relevant_bytes, dict(left.nodes), left.policy_nodes) == (
        right.relevant_bytes,
        dict(right.nodes),
        right.policy_nodes,
    )
    assert dict(left.owners) == dict(right.owners)
    assert left.expanded_bytes == right.expanded_bytes
    assert list(left.by_path) == list(right.by_path)
    assert all(left.by_path[path] == right.by_path[path] for path in left.by_path)
    # What a state builds from its objects, mended from the last state's or built afresh: the same.
    assert left.desired.keyed == right.desired.keyed
    assert left.desired.by_key() == right.desired.by_key()
    assert left.desired.key_set == right.desired.key_set
    assert left.desired.targets == right.desired.targets
    assert dict(left.desired.by_target) == dict(right.desired.by_target)
    assert left.desired.content_hash == right.desired.content_hash


def built(index: RevisionIndex) -> RevisionIndex:
    """The index with what a pass asks of its state built, as a worker's pass builds it: a state made
    in place from it starts from those."""
    desired = index.desired
    _ = desired.keyed, desired.key_set, desired.targets, desired.by_target, desired.content_hash
    return index


LIMITS = [
    Limits(),
    # Tight enough that random edits cross each whole-revision limit both ways.
    replace(Limits(), max_objects=14, max_files=9, max_revision_bytes=1_400, max_file_bytes=300),
    # The objects' content in every target, added up: a file sent to three namespaces counts three times.
    replace(Limits(), max_expanded_bytes=200),
]


@pytest.mark.parametrize("limits", LIMITS, ids=["default-limits", "tight-limits", "tight-expanded-bytes"])
@pytest.mark.parametrize("seed", range(6))
def test_a_commit_loaded_from_its_changes_is_the_whole_load_or_nothing(limits: Limits, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - a reproducible walk, not a secret
    tree = Tree({"sluice.yaml": POLICY, "configmaps/base.yaml": configmap("base", "0", None)})
    cache = ParseCache()
    loaded = load_whole(tree, limits, cache)
    assert loaded is not None
    index = loaded[1]
    outcomes = {"same": 0, "in place": 0, "whole load needed": 0, "rejected": 0}
    for step in range(150):
        if step % 2:  # every other state asked for nothing yet: nothing to carry over
            index = built(index)
        before = dict(tree.files)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            if tree.files.keys() - {"sluice.yaml"} and rng.random() < 0.2:
                del tree.files[rng.choice(sorted(tree.files.keys() - {"sluice.yaml"}))]
            else:
                path, content = random_file(rng)
                tree.files[path] = content
        changes = changes_between(index.tree, tree.listing())
        from_changes = load_revision_changes(
            index, changes, tree.read_blobs, limits=limits, cache=cache, scope=SCOPE
        )
        whole = load_whole(tree, limits, ParseCache())
        if whole is None:
            assert from_changes is None, "a rejected revision must be loaded whole, which reports its errors"
            outcomes["rejected"] += 1
            tree.files = before  # the author mends it: the next commit starts from the last valid one
            continue
        if from_changes is None:
            outcomes["whole load needed"] += 1
            index = whole[1]
            continue
        outcomes["in place"] += from_changes[1].owners is index.owners
        same_index(from_changes[1], whole[1])
        outcomes["same"] += 1
        index = from_changes[1]
    # Every valid commit (the policy unchanged) loads from its changes; the rejected ones, many of them
    # past a limit in the tight walk, never do.
    assert outcomes["whole load needed"] == 0, outcomes
    assert outcomes["same"] >= 50, outcomes
    # (The expanded-bytes walk rejects more states, so fewer are left to mend in place.)
    assert outcomes["in place"] >= (5 if limits.max_expanded_bytes < 1_000 else 10), outcomes
    assert outcomes["rejected"] >= 25, outcomes


def test_a_change_that_passes_the_expanded_bytes_limit_with_the_kept_files_is_loaded_whole() -> None:
    """Each push's changed files alone stay under SLUICE_MAX_EXPANDED_BYTES; together with the files kept
    from before they pass it. Counting the changed files alone let a pusher grow a revision past the limit
    a push at a time, and whether a commit was valid depended on which worker process loaded it."""
    limits = replace(Limits(), max_expanded_bytes=1_000)
    tree = Tree({"sluice.yaml": POLICY, "configmaps/a.yaml": configmap("a", "x" * 250, "canary")})
    cache = ParseCache()
    loaded = load_whole(tree, limits, cache)
    assert loaded is not None
    index = loaded[1]
    assert index.expanded_bytes >= 250
    tree.files["configmaps/b.yaml"] = configmap("b", "y" * 250, None)  # three target namespaces: 750 more
    changes = changes_between(index.tree, tree.listing())
    assert (
        load_revision_changes(index, changes, tree.read_blobs, limits=limits, cache=cache, scope=SCOPE)
        is None
    )
    with pytest.raises(RevisionRejected) as rejected:
        load_whole_or_raise(tree, limits)
    assert [(error.file, "1,000 bytes" in error.message) for error in rejected.value.errors] == [
        ("configmaps/b.yaml", True)
    ]


def load_whole_or_raise(tree: Tree, limits: Limits) -> None:
    listing = tree.listing()
    load_revision_indexed(
        {path: blob for path, (blob, _) in listing.items()},
        tree.read_blobs,
        sizes={path: size for path, (_, size) in listing.items()},
        limits=limits,
        cache=ParseCache(),
        scope=SCOPE,
    )


def test_a_changed_policy_scope_or_limits_loads_the_whole_tree() -> None:
    tree = Tree({"sluice.yaml": POLICY, "configmaps/a.yaml": configmap("a", "1", None)})
    cache = ParseCache()
    loaded = load_whole(tree, Limits(), cache)
    assert loaded is not None
    index = loaded[1]
    tree.files["configmaps/a.yaml"] = configmap("a", "2", None)
    changes = changes_between(index.tree, tree.listing())
    load = lambda **kw: load_revision_changes(index, changes, tree.read_blobs, cache=cache, **kw)  # noqa: E731
    assert load(limits=Limits(), scope=SCOPE) is not None
    assert load(limits=replace(Limits(), max_objects=100), scope=SCOPE) is None
    assert load(limits=Limits(), scope=AdminScope.of(["canary"], [])) is None
    tree.files["sluice.yaml"] = POLICY + b"prune: true\n"
    changes = changes_between(index.tree, tree.listing())
    assert (
        load_revision_changes(index, changes, tree.read_blobs, limits=Limits(), cache=cache, scope=SCOPE)
        is None
    )


def test_unchanged_files_keep_their_very_objects() -> None:
    files = {"sluice.yaml": POLICY} | {
        f"configmaps/cm-{i}.yaml": configmap(f"cm-{i}", "1", "canary") for i in range(50)
    }
    tree = Tree(files)
    cache = ParseCache()
    loaded = load_whole(tree, Limits(), cache)
    assert loaded is not None
    index = loaded[1]
    tree.files["configmaps/cm-7.yaml"] = configmap("cm-7", "2", "canary")
    read: list[str] = []

    def read_blobs(blob_ids: list[str]) -> dict[str, bytes]:
        read.extend(blob_ids)
        return tree.read_blobs(blob_ids)

    changes = changes_between(index.tree, tree.listing())
    changed = load_revision_changes(index, changes, read_blobs, limits=Limits(), cache=cache, scope=SCOPE)
    assert changed is not None
    assert len(read) == 1, "only the changed file is read"
    old = {obj.key: obj for obj in index.desired.objects}
    for obj in changed[0].objects:
        assert (obj is old[obj.key]) == (obj.origin != "configmaps/cm-7.yaml")


def test_a_state_is_made_in_place_only_from_the_same_keys() -> None:
    """``with_replaced`` mends what a state built (its content hash, which approvals are recorded
    under, among them): a call that would add or drop an object is refused, never half-mended."""
    loaded = load_whole(
        Tree({"sluice.yaml": POLICY, **{f"configmaps/{n}.yaml": configmap(n, "1", None) for n in "ab"}}),
        Limits(),
        ParseCache(),
    )
    assert loaded is not None
    state = built(loaded[1]).desired
    stranger = replace(state.objects[0], name="stranger")
    with pytest.raises(ValueError, match="same keys"):
        state.with_replaced((stranger, *state.objects[1:]), {stranger.key: stranger})
    with pytest.raises(ValueError, match="as many objects"):
        state.with_replaced(state.objects[1:], {})


def test_a_change_that_repeats_a_kept_flag_sets_key_is_loaded_whole_and_refused() -> None:
    """A push that edits only flags/q.json to define the key the unchanged flags/p.json holds: loaded
    from its changes alone, the check of keys across flag sets never saw p.json's."""
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
    tree = Tree(
        {
            "sluice.yaml": POLICY,
            "flags/p.json": json.dumps({"flags": {"checkout": flag}}).encode(),
            "flags/q.json": json.dumps({"flags": {"banner": flag}}).encode(),
        }
    )
    cache = ParseCache()
    loaded = load_whole(tree, Limits(), cache)
    assert loaded is not None
    tree.files["flags/q.json"] = json.dumps({"flags": {"banner": flag, "checkout": flag}}).encode()
    changes = changes_between(loaded[1].tree, tree.listing())

    from_changes = load_revision_changes(
        loaded[1], changes, tree.read_blobs, limits=Limits(), cache=cache, scope=SCOPE
    )

    assert from_changes is None, "loaded whole, which reports the key defined twice"
    assert load_whole(tree, Limits(), ParseCache()) is None
