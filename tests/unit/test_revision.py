"""Loading a whole revision: expansion to targets, cross-file checks, and parsing once per blob."""

import json

import pytest

from gitops.desired.errors import RevisionRejected
from gitops.desired.revision import ParseCache, flag_set_name, load_revision
from gitops.desired.scope import AdminScope

POLICY = (
    b"targets:\n  namespaces: [canary, team-a, team-b]\n"
    b"flags:\n  namespace: flags\n"
    b"allowedNamespaces: [canary, 'team-*', flags]\n"
)


def configmap(name: str, value: str = "1", namespace: str | None = None) -> bytes:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}{ns}\ndata:\n  v: '{value}'\n".encode()


class Repo:
    """Files addressed by blob id, like a Git tree, with a counter of blob reads."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.reads = 0

    def tree(self) -> dict[str, str]:
        return {path: f"blob-{hash((path, content))}" for path, content in self.files.items()}

    def read_blobs(self, blob_ids: list[str]) -> dict[str, bytes]:
        self.reads += len(blob_ids)
        by_id = {f"blob-{hash((p, c))}": c for p, c in self.files.items()}
        return {blob: by_id[blob] for blob in blob_ids}


def test_manifests_expand_to_targets_in_policy_order():
    repo = Repo({"sluice.yaml": POLICY, "configmaps/app.yaml": configmap("app"), "docs/README.md": b"x"})
    state = load_revision(repo.tree(), repo.read_blobs)
    assert [(o.namespace, o.name, o.rank) for o in state.objects] == [
        ("canary", "app", 0),
        ("team-a", "app", 1),
        ("team-b", "app", 2),
    ]
    assert len({o.group for o in state.objects}) == 1


def test_a_one_file_commit_parses_one_file():
    files = {"sluice.yaml": POLICY} | {
        f"configmaps/cm-{i}.yaml": configmap(f"cm-{i}", namespace="canary") for i in range(500)
    }
    repo = Repo(files)
    cache = ParseCache()
    load_revision(repo.tree(), repo.read_blobs, cache=cache)
    assert (cache.misses, cache.hits) == (500, 0)

    repo.files["configmaps/cm-7.yaml"] = configmap("cm-7", "2", namespace="canary")
    repo.reads = 0
    state = load_revision(repo.tree(), repo.read_blobs, cache=cache)

    assert cache.misses == 501, "only the changed file is parsed again"
    assert cache.hits == 499
    assert repo.reads == 2, "the changed blob and the policy are the only blobs read"
    assert state.by_key()[("default", "canary", "cm-7")].content.data == {"v": "2"}


def test_a_cached_file_still_takes_part_in_cross_file_checks():
    repo = Repo({"sluice.yaml": POLICY, "configmaps/a.yaml": configmap("app", namespace="canary")})
    cache = ParseCache()
    load_revision(repo.tree(), repo.read_blobs, cache=cache)
    repo.files["configmaps/b.yaml"] = configmap("app", namespace="canary")
    with pytest.raises(RevisionRejected) as rejected:
        load_revision(repo.tree(), repo.read_blobs, cache=cache)
    assert [str(e) for e in rejected.value.errors] == [
        "configmaps/b.yaml:1: metadata.name: ConfigMap canary/app is already defined in"
        " configmaps/a.yaml line 1"
    ]


def test_the_operator_allowlist_narrows_what_the_policy_allows():
    repo = Repo({"sluice.yaml": POLICY, "configmaps/app.yaml": configmap("app", namespace="team-b")})
    with pytest.raises(RevisionRejected) as rejected:
        load_revision(repo.tree(), repo.read_blobs, scope=AdminScope.of(["canary", "team-a"], []))
    assert "namespace 'team-b' is outside the namespaces this source may manage (canary, team-a)" in str(
        rejected.value.errors[0]
    )


def test_flag_sets_are_published_in_the_flags_namespace_with_the_commit_stamped():
    flags = {
        "flags": {"f": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}}
    }
    repo = Repo({"sluice.yaml": POLICY, "flags/team/Checkout.json": json.dumps(flags).encode()})
    (flag_set,) = load_revision(repo.tree(), repo.read_blobs).objects
    assert (flag_set.namespace, flag_set.name, flag_set.kind) == ("flags", "team-checkout", "flagset")
    rendered = flag_set.rendered(commit="c" * 40, source="shop")
    published = json.loads(rendered.data["team-checkout.flagd.json"])
    assert published["metadata"] == {"sluiceCommit": "c" * 40, "sluiceSource": "shop"}
    assert published["flags"] == flags["flags"]
    assert flag_set.content.hash != rendered.hash, "the content hash leaves the commit stamp out"


@pytest.mark.parametrize(
    "path, name",
    [("flags/checkout.json", "checkout"), ("flags/a/b/C_D.yaml", "a-b-c-d"), ("flags/x.y.json", "x.y")],
)
def test_flag_set_names_come_from_the_path(path, name):
    assert flag_set_name(path) == name


def loaded(files: dict[str, bytes]):
    repo = Repo(files)
    return load_revision(repo.tree(), repo.read_blobs)


def rejected(files: dict[str, bytes]) -> list:
    with pytest.raises(RevisionRejected) as refused:
        load_revision(Repo(files).tree(), Repo(files).read_blobs)
    return refused.value.errors


def flag_set_of(values: int) -> bytes:
    variants = {f"v{index}": f"{index:04d}" * 4 for index in range(values)}
    flag = {"state": "ENABLED", "variants": variants, "defaultVariant": "v0"}
    return json.dumps({"flags": {"big": flag}}, separators=(",", ":")).encode()


def test_a_flag_set_whose_published_text_passes_a_configmaps_size_is_refused_before_any_apply():
    # Compact in Git (1.4 MB), indented when published: 45,000 variants are 1.8 MB in the cluster.
    (error,) = rejected({"sluice.yaml": POLICY, "flags/big.json": flag_set_of(45_000)})
    assert (error.file, error.line, error.field) == ("flags/big.json", None, "")
    assert "a ConfigMap holds at most 1,048,576" in error.message
    assert loaded({"sluice.yaml": POLICY, "flags/big.json": flag_set_of(20_000)})  # 0.8 MB published


def test_a_flag_key_two_flag_set_files_define_is_refused_naming_both():
    """flagd serves every flag set of the flags namespace together, merged by key: which of the two
    definitions a client got would depend on flagd's source order."""
    files = {"sluice.yaml": POLICY, "flags/a.json": flag_set_of(2), "flags/b.json": flag_set_of(3)}
    (error,) = rejected(files)
    assert (error.file, error.line, error.field) == ("flags/b.json", 1, "flags.big")
    assert "'big' is also defined in flags/a.json (line 1):" in error.message
    assert "merged by key" in error.message
    other = json.dumps({"flags": {"small": json.loads(flag_set_of(2))["flags"]["big"]}}).encode()
    assert len(loaded({**files, "flags/b.json": other}).objects) == 2, "different keys: both published"


def test_a_flag_key_two_flag_set_files_define_is_refused_at_its_line_in_each():
    switch = '{state: ENABLED, variants: {"on": true, "off": false}, defaultVariant: "on"}'
    files = {
        "sluice.yaml": POLICY,
        "flags/a.yaml": f"flags:\n  one: {switch}\n  two: {switch}\n".encode(),
        "flags/b.json": (
            b'{\n  "flags": {\n'
            b'    "three": {"state": "DISABLED", "variants": {"x": 1}, "defaultVariant": "x"},\n'
            b'    "two": {"state": "DISABLED", "variants": {"x": 1}, "defaultVariant": "x"}\n  }\n}\n'
        ),
    }
    (error,) = rejected(files)
    assert (error.file, error.line, error.field) == ("flags/b.json", 4, "flags.two")
    assert "'two' is also defined in flags/a.yaml (line 3):" in error.message


def test_a_flag_set_whose_configmap_key_would_pass_253_characters_is_refused():
    name = "f" * 243  # the key is the name and ".flagd.json"
    files = {"sluice.yaml": POLICY, f"flags/{name}.json": flag_set_of(2)}
    (error,) = rejected(files)
    assert error.file == f"flags/{name}.json"
    assert "ConfigMap key" in error.message and "253" in error.message
    assert len(loaded({"sluice.yaml": POLICY, f"flags/{name[:242]}.json": flag_set_of(2)}).objects) == 1


def test_annotations_are_counted_with_the_ones_sluice_adds():
    path = "configmaps/app.yaml"
    own = (
        len("sluice.dev/commit")
        + 64
        + len("sluice.dev/content-hash")
        + 32
        + len("sluice.dev/origin")
        + len(path)
    )
    room = 256 * 1024 - own - len("note")

    def manifest(size: int) -> bytes:
        return (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: canary\n"
            f"  annotations:\n    note: '{'x' * size}'\n"
        ).encode()

    assert loaded({"sluice.yaml": POLICY, path: manifest(room)})
    (error,) = rejected({"sluice.yaml": POLICY, path: manifest(room + 1)})
    assert error.field == "metadata.annotations"
    assert f"with the {own} of Sluice's own" in error.message


@pytest.mark.parametrize("name", ["a\x9b31m.yaml", "a\u202elmay.x.yaml", "a\u200b.yaml", "a\x1b.yaml"])
def test_a_file_name_with_control_or_invisible_format_characters_is_refused_and_shown_escaped(name):
    """C1 controls (U+009B is a terminal's CSI) and bidi overrides passed: shown raw in errors, logs and
    `gitops validate`, and stamped into sluice.dev/origin."""
    repo = Repo({"sluice.yaml": POLICY, f"configmaps/{name}": configmap("app")})
    with pytest.raises(RevisionRejected) as rejected:
        load_revision(repo.tree(), repo.read_blobs)
    (error,) = rejected.value.errors
    assert "rename it" in error.message
    assert error.file.isascii() and error.file.isprintable()


# Written as escapes: "می‌خواهم" (Persian, a non-joiner), "क्‍ष" (Devanagari, a joiner), a family emoji.
PERSIAN = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
DEVANAGARI = "\u0915\u094d\u200d\u0937"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"


@pytest.mark.parametrize("name", ["café-日本", PERSIAN, DEVANAGARI, FAMILY])
def test_a_file_name_in_any_script_is_read(name):
    """Zero-width joiners and non-joiners are ordinary in Persian and Indic words and emoji sequences."""
    repo = Repo({"sluice.yaml": POLICY, f"configmaps/{name}.yaml": configmap("app")})
    assert len(load_revision(repo.tree(), repo.read_blobs).objects) == 3
