"""Position-aware loading of YAML and JSON."""

from gitops.desired.documents import load_json, load_yaml


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
