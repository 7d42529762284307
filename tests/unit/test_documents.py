"""Position-aware loading of YAML and JSON."""

import dataclasses
import datetime
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops.desired import documents
from gitops.desired.documents import load_json, load_yaml
from gitops.desired.limits import DEFAULT_LIMITS, Limits


def test_lines_are_kept_for_every_path_and_keys_keep_their_source_text():
    (document,), errors = load_yaml("a.yaml", b"metadata:\n  name: app\ndata:\n  on: 'x'\n  8080: y\n")
    assert errors == []
    assert document.data == {"metadata": {"name": "app"}, "data": {"on": "x", "8080": "y"}}
    assert document.line_of("data", "8080") == 5
    assert document.line_of("metadata", "name") == 2
    assert document.line_of("missing", "deeper") == 1


def test_duplicate_keys_are_reported_with_both_lines():
    _, errors = load_yaml("a.yaml", b"data:\n  a: '1'\n  a: '2'\n")
    assert [str(e) for e in errors] == ["a.yaml:3: data.a: duplicate key 'a' (first defined on line 2)"]


def test_json_syntax_errors_carry_json_positions():
    _, errors = load_json("f.json", b'{\n  "flags": {\n    "x": 1,\n  }\n}')
    assert str(errors[0]).startswith("f.json:4: JSON syntax error")


def test_absurdly_deep_json_is_an_error_not_a_crash():
    _, errors = load_json("deep.json", b"[" * 100_000 + b"]" * 100_000)
    assert [str(e) for e in errors] == [
        "deep.json:1: lists and mappings are nested more than 64 deep (setting SLUICE_MAX_DEPTH)"
    ]


def test_multi_document_yaml_skips_empty_documents_and_numbers_the_rest():
    documents, _ = load_yaml("m.yaml", b"---\na: 1\n---\n---\nb: 2\n")
    assert [(d.index, d.data) for d in documents] == [(0, {"a": 1}), (2, {"b": 2})]


def test_a_quoted_or_block_value_is_text_however_long_and_digit_like_it_is():
    digits = "1" * 1500
    text = f'data:\n  quoted: "{digits}"\n  single: \'{digits}\'\n  block: |\n    {digits}\n  short: "8080"\n'
    (document,), errors = load_yaml("a.yaml", text.encode())
    assert errors == []
    expected = {"quoted": digits, "single": digits, "block": digits + "\n", "short": "8080"}
    assert document.data["data"] == expected
    _, errors = load_yaml("b.yaml", f"data:\n  plain: {digits}\n".encode())
    assert [str(error) for error in errors] == [
        "b.yaml:2: data.plain: a number of 1,500 characters is too long; quote it if it is text"
    ]


def test_a_json_number_too_long_is_refused_as_yaml_refuses_it():
    """A JSON file that YAML reads differently keeps json's data: its numbers must meet the same bound,
    or a 4,000-digit variant reaches a flag set that readers with 64-bit numbers cannot evaluate."""
    digits = "9" * 4000
    text = f'{{"flags": {{"f": {{"variants": {{"a": {digits}, "b": 1}}, "state": "ENABLED"}}}}}}'
    _, errors = load_json("flags/a.json", text.encode())
    assert [str(error) for error in errors] == [
        "flags/a.json: a number of 4,000 characters is too long; quote it if it is text"
    ]
    (document,), errors = load_json("flags/b.json", f'{{"n": -{"9" * 99}}}'.encode())  # 100 characters
    assert errors == [] and document.data["n"] == -int("9" * 99)


# -- the inline scalar path -------------------------------------------------------------------

_SCALARS = (
    "a",
    "on",
    "8080",
    "0x1F",
    "1_000",
    "3.5",
    "1e3",
    ".nan",
    "null",
    "~",
    "true",
    "no",
    "2024-01-02",
    "1:2:3",
    "'<<'",
    '"x"',
    "'8080'",
    "&a x",
    "*a",
    "&a 7",
    "!!str 5",
    "!!int x",
    "!!binary aGk=",
    "!local v",
    "!!set {a}",
    "[1, on]",
    "{a: b, a: c}",
    "&m {k: [v, 1]}",
    "*m",
    "",
    "<<",
    "x: y",
)
_KEYS = ("a", "b", "on", "8080", "null", "1.5", "<<", "&k key", "*k", "*m", "'q'", "[k, 1]")


@st.composite
def _block(draw: st.DrawFn, indent: str = "", depth: int = 0) -> str:
    """A block mapping or list, mostly well formed, its values drawn from awkward YAML."""
    is_map = draw(st.booleans())
    out = ""
    for _ in range(draw(st.integers(1, 4))):
        head = f"{indent}{draw(st.sampled_from(_KEYS))}:" if is_map else f"{indent}-"
        if depth < 3 and draw(st.integers(0, 3)) == 0:
            out += head + "\n" + draw(_block(indent + "  ", depth + 1))
        elif draw(st.integers(0, 9)) == 0:
            out += f"{head} |\n{indent}  block text\n"
        else:
            out += f"{head} {draw(st.sampled_from(_SCALARS))}\n"
    return out


@st.composite
def _yaml_texts(draw: st.DrawFn) -> str:
    return "---\n".join(draw(st.lists(_block(), min_size=1, max_size=3)))


def _loaded(
    text: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[tuple[int, object, dict[object, int]]], list[str], int]:
    usage = documents.Usage()
    loaded, errors = load_yaml("f.yaml", text.encode(), usage=usage, limits=limits)
    return [(d.index, d.data, dict(d.lines)) for d in loaded], [str(e) for e in errors], usage.nodes


def _through_the_general_path(builder: documents._Builder, event: object) -> None:
    builder._on_any_scalar(event, documents._line(event))  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_yaml_texts(), st.sampled_from((DEFAULT_LIMITS.max_file_nodes, 1, 2, 5, 9, 14, 20)))
def test_the_inline_scalar_path_builds_what_the_general_path_builds(text: str, budget: int) -> None:
    # Small budgets end files at every kind of value: the refusal must come at the same one.
    limits = dataclasses.replace(DEFAULT_LIMITS, max_file_nodes=budget)
    inline = _loaded(text, limits)
    with mock.patch.object(documents._Builder, "_on_scalar", _through_the_general_path):
        general = _loaded(text, limits)
    # By their text: NaN is not equal to itself, and the text shows the keys' order too.
    assert repr(inline) == repr(general)


def test_the_inline_path_reads_the_values_a_manifest_holds() -> None:
    text = "a: info\nb: 8080\nc: '8080'\nd: on\ne:\n  - x\n  - null\n  - 1.5\nf: 2024-01-02\n"
    (document,), errors = load_yaml("f.yaml", text.encode())
    assert errors == []
    assert document.data == {
        "a": "info",
        "b": 8080,
        "c": "8080",
        "d": True,
        "e": ["x", None, 1.5],
        "f": datetime.date(2024, 1, 2),
    }
    assert document.line_of("e", 1) == 7
