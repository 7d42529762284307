import pytest

from gitops.desired.configmaps import parse_configmap
from gitops.desired.documents import load_yaml
from gitops.desired.errors import ErrorTally


def parse(text: str):
    documents, errors = load_yaml("configmaps/x.yaml", text.encode())
    assert not errors, errors
    tally = ErrorTally("configmaps/x.yaml")
    return parse_configmap(documents[0], tally), tally.listed()


GOOD = """apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
  labels:
    app: shop
  annotations:
    team: payments
data:
  LOG_LEVEL: info
  application.properties: |
    server.port=8080
binaryData:
  logo.png: iVBORw0KGgo=
immutable: false
"""


def test_a_valid_manifest_is_parsed_with_its_line():
    manifest, errors = parse(GOOD)
    assert errors == []
    assert manifest is not None
    assert manifest.name == "app-config"
    assert manifest.namespace is None
    assert manifest.data == {"LOG_LEVEL": "info", "application.properties": "server.port=8080\n"}
    assert manifest.binary_data == {"logo.png": "iVBORw0KGgo="}
    assert manifest.labels == {"app": "shop"}
    assert manifest.immutable is False
    assert manifest.line == 1


def manifest_with(extra: str, *, data: str = "data:\n  a: b\n") -> str:
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n{extra}{data}"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
            "x.yaml:2: kind: Secrets are never managed by Sluice",
        ),
        ("apiVersion: v1\nkind: ConfigMap\n", "x.yaml:1: metadata: metadata with a name is required"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: a}\n", "metadata.name: a name is required"),
        (
            manifest_with("", data="data:\n  n: 3\n"),
            'x.yaml:6: data.n: value must be a string, not a number; quote it: "3"',
        ),
        (
            manifest_with("", data="data:\n  on: true\n"),
            'data.on: value must be a string, not a boolean; quote it: "true"',
        ),
        (manifest_with("", data="data:\n  empty: null\n"), "data.empty: value must be a string, not null"),
        (manifest_with("", data="data:\n  ../etc: x\n"), "is not a valid key"),
        (manifest_with("", data="binaryData:\n  b: '%%%'\n"), "binaryData.b: value is not valid base64"),
        (
            manifest_with("", data="data:\n  k: a\nbinaryData:\n  k: YQ==\n"),
            "binaryData.k: key 'k' is also in data",
        ),
        (manifest_with("immutable: sometimes\n"), "immutable: must be true or false, not a string"),
        (manifest_with("  uid: abc\n"), "metadata.uid: 'uid' is set by the cluster"),
        (manifest_with("  labels:\n    app.kubernetes.io/managed-by: me\n"), "is reserved: Sluice sets it"),
        (manifest_with("  annotations:\n    sluice.dev/commit: x\n"), "is reserved"),
        (manifest_with("  labels:\n    tier: 'not valid!'\n"), "is not a valid label value"),
        (manifest_with("  labels:\n    tier: 3\n"), "metadata.labels.tier: value must be a string"),
        (
            manifest_with("  namespace: Team_A\n"),
            "metadata.namespace: 'Team_A' is not a valid namespace name",
        ),
        (manifest_with("spec: {}\n"), "x.yaml:5: spec: unknown field 'spec'"),
        (manifest_with("  lables: {a: b}\n"), "unknown field 'lables'; did you mean 'labels'?"),
        (
            manifest_with("", data="data:\n  big: " + "x" * (1024 * 1024) + "\n"),
            "a ConfigMap holds at most 1048576",
        ),
    ],
)
def test_every_kind_of_bad_manifest_is_reported_precisely(text, expected):
    manifest, errors = parse(text)
    assert manifest is None
    assert any(expected in str(error) for error in errors), [str(e) for e in errors]


def test_the_size_limit_counts_keys_and_decoded_binary_data():
    just_under = "x" * (1024 * 1024 - len("big"))
    manifest, errors = parse(manifest_with("", data=f"data:\n  big: {just_under}\n"))
    assert errors == []
    manifest, errors = parse(manifest_with("", data=f"data:\n  big: {just_under}x\n"))
    assert manifest is None


@pytest.mark.parametrize("section", ["data", "binaryData"])
def test_a_key_starting_with_two_dots_is_refused_as_the_apiserver_refuses_it(section):
    """apimachinery's IsConfigMapKey refuses any key that starts with ".." (a path that climbs out of a
    mounted volume), not only ".." itself: validation says so, before any object is applied."""
    manifest, errors = parse(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app}}\n{section}:\n  ..data: QQ==\n"
    )
    assert manifest is None and [e.field for e in errors] == [f'{section}["..data"]']


@pytest.mark.parametrize("value", ["QUJD=", "QUJD==", "QR=="])
def test_binary_data_must_be_base64_as_the_apiserver_writes_it(value):
    """Python decodes excess padding that Go's decoder refuses (the apply would get a 400), and non-zero
    padding bits that the apiserver keeps as the canonical form (QR== comes back as QQ==: every pass
    would then see an edit nobody made)."""
    manifest, errors = parse(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: app}}\nbinaryData:\n  blob: {value}\n"
    )
    assert manifest is None and [e.field for e in errors] == ["binaryData.blob"]
    assert "canonical" in errors[0].message, errors[0]
