"""What a cluster holds is anybody's text: as PostgreSQL can store it (jsonb refuses U+0000, which a
live object may hold), provenance that Sluice did not write, and JSON nested past Python's recursion
limit. The real database, apiserver and passes are in tests/integration/test_reconcile.py."""

from __future__ import annotations

import datetime
import hashlib
import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from gitops import storable
from gitops.cluster.client import CLUSTER_TEXT_LENGTH, _reason, cluster_text
from gitops.consumers.workloads import MESSAGE_LENGTH, health_of
from gitops.desired.content import Content
from gitops.desired.limits import DEFAULT_LIMITS
from gitops.desired.revision import flag_set_key, published_baseline, published_document
from gitops.plan import diff_content
from gitops.plan.provenance import live_provenance
from gitops.plan.stamps import stamp_of
from gitops.storable import (
    JsonbEncoder,
    compact_json,
    json_value,
    jsonb_text,
    sorted_json_utf8,
    storable_text,
)

COMMIT = "3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39"
CONTENT_HASH = "0123456789abcdef0123456789abcdef"


def stored(value: object, *, ensure_ascii: bool = True) -> object:
    return json.loads(jsonb_text(json.dumps(value, ensure_ascii=ensure_ascii)))


def replaced(value: str) -> str:
    return value.replace("\x00", "\ufffd")


@given(st.text(), st.booleans())
def test_every_string_comes_back_with_nul_replaced_and_nothing_else_changed(value, ensure_ascii):
    assert stored({value: [value]}, ensure_ascii=ensure_ascii) == {replaced(value): [replaced(value)]}


@given(st.lists(st.sampled_from(["\\", "\x00", "u0000", "a", "é"])).map("".join), st.booleans())
def test_runs_of_backslashes_nul_and_u0000_text_come_back_as_they_were(value, ensure_ascii):
    assert stored([value, {value: value}], ensure_ascii=ensure_ascii) == [
        replaced(value),
        {replaced(value): replaced(value)},
    ]


@pytest.mark.parametrize(
    "value",
    [
        "\\u0000",  # the six characters, not U+0000
        "\\\\u0000",
        "\\\x00",  # a backslash, then U+0000
        "\\\\\x00",
        "\x00\x00\\u0000\x00",
    ],
)
def test_escaped_backslashes_before_u0000_text_are_left_alone(value):
    assert stored(value) == replaced(value)


@pytest.mark.timeout(10)
def test_a_long_run_of_backslashes_is_scanned_once():
    """A run not followed by "u0000" was once tried again from each of its backslashes: 80,000 of
    them took 115 s, a million would take hours. Now one attempt a run: milliseconds."""
    value = ["\\" * 1_000_000 + "x", "a\x00"]
    assert stored(value) == ["\\" * 1_000_000 + "x", "a\ufffd"]


def test_json_without_nul_is_returned_as_the_very_same_text():
    text = json.dumps({"data": {"conf": "line\n" * 100, "path": "C:\\u0001"}})
    assert jsonb_text(text) is text


def test_the_fields_encoder_writes_what_jsonb_takes():
    assert json.dumps({"v": "a\x00b"}, cls=JsonbEncoder) == '{"v": "a\\ufffdb"}'


def test_a_message_from_a_cluster_is_kept_storable_and_bounded():
    assert cluster_text("denied: a\x00b") == "denied: a\ufffdb"
    assert cluster_text("x" * 5000) == "x" * CLUSTER_TEXT_LENGTH + "…"
    refusal = ApiException(status=422, reason="Unprocessable Entity")
    refusal.body = json.dumps({"kind": "Status", "message": "webhook says \x00 no" + "!" * 9000})
    reason = _reason(refusal)
    assert reason.startswith("webhook says \ufffd no!!!") and len(reason) == CLUSTER_TEXT_LENGTH + 1


def test_text_for_a_text_column():
    assert storable_text("a\x00b\x00") == "a\ufffdb\ufffd"
    plain = "plain"
    assert storable_text(plain) is plain


def configmap(annotations: dict[str, object]) -> dict[str, object]:
    labels = {"app.kubernetes.io/managed-by": "sluice", "sluice.dev/source": "shop"}
    return {"metadata": {"name": "app", "labels": labels, "annotations": annotations}}


def test_provenance_as_sluice_writes_it_is_read_back():
    provenance = {"sluice.dev/commit": COMMIT, "sluice.dev/content-hash": CONTENT_HASH}
    assert live_provenance(configmap(provenance)) == ("shop", COMMIT, CONTENT_HASH)
    sha256_commit = "ab" * 32
    assert live_provenance(configmap({"sluice.dev/commit": sha256_commit}))[1] == sha256_commit


@pytest.mark.parametrize(
    "forged",
    [
        "x" * 65,
        COMMIT + "0",
        COMMIT.upper(),
        COMMIT[:-1] + "\x00",
        COMMIT + "\n",
        "main",
        "",
        7,
        None,
    ],
)
def test_provenance_that_sluice_did_not_write_reads_as_absent(forged):
    live = configmap({"sluice.dev/commit": forged, "sluice.dev/content-hash": forged})
    assert live_provenance(live) == ("shop", None, None)


def test_a_workloads_failure_message_is_kept_storable_and_bounded():
    deployment = {
        "kind": "Deployment",
        "metadata": {"generation": 2},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 2,
            "conditions": [
                {
                    "type": "Progressing",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "stuck\x00" + "x" * 10_000,
                }
            ],
        },
    }
    health = health_of(deployment)
    assert health.detail.startswith("ProgressDeadlineExceeded: stuck\ufffdxxx")
    assert len(health.detail) <= MESSAGE_LENGTH + len("ProgressDeadlineExceeded: ")


DEEP = "[" * 100_000  # 100 KB: a ConfigMap holds up to 1 MiB


@pytest.mark.parametrize(
    "text, expected",
    [
        (DEEP, None),
        ('{"flags": ' + DEEP, None),
        ("[1, 2]", None),
        ('"text"', None),
        ("not json", None),
        ("", None),
        (None, None),
        ('{"flags": {}, "metadata": 5}', {"flags": {}, "metadata": 5}),
        (
            '{"flags": {}, "metadata": {"sluiceCommit": "c", "team": "x"}}',
            {"flags": {}, "metadata": {"team": "x"}},
        ),
    ],
)
def test_a_published_flag_document_is_read_whatever_the_cluster_holds(text, expected):
    assert published_document(text) == expected


def published_flag_set(document_text: str) -> dict[str, object]:
    """A flag set as Sluice published it, its document replaced by someone with ``document_text``."""
    labels = {
        "app.kubernetes.io/managed-by": "sluice",
        "sluice.dev/source": "shop",
        "sluice.dev/kind": "flagset",
    }
    provenance = {"sluice.dev/commit": COMMIT, "sluice.dev/content-hash": CONTENT_HASH}
    return {
        "metadata": {"name": "flags", "resourceVersion": "7", "labels": labels, "annotations": provenance},
        "data": {flag_set_key("flags"): document_text},
    }


def test_a_flag_sets_stamp_and_readable_diff_survive_json_nested_past_the_recursion_limit():
    assert stamp_of(published_flag_set(DEEP)).as_applied is False
    (change,) = diff_content(Content(data={"k": DEEP}), Content(data={"k": '{\n  "a": 1\n}'}))
    assert change.unified().endswith('+{\n+  "a": 1\n+}\n')


@pytest.mark.timeout(10)
def test_a_unified_diff_of_many_equal_lines_is_linear_and_says_all_was_replaced():
    # 100,000 blank lines against a file of 199 with 100 blank: difflib alone takes about a minute.
    git = "".join("\n" if i % 2 else f"line {i}\n" for i in range(199))
    (change,) = diff_content(Content(data={"k": "\n" * 100_000}), Content(data={"k": git}))
    text = change.unified()
    assert text.splitlines()[2] == "@@ -1,100000 +1,199 @@"
    assert text.count("\n-") == 100_000 and text.count("\n+") == 200


def test_an_ordinary_change_of_a_large_file_is_still_matched():
    old = "".join(f"key.{i}=value-{i}\n" for i in range(60_000))
    (change,) = diff_content(
        Content(data={"k": old}), Content(data={"k": old.replace("value-30000\n", "x\n")})
    )
    assert change.unified().count("\n-") == 1


@pytest.mark.parametrize(
    "text",
    [
        "[" * 40 + "]" * 40,  # nested past READABLE_JSON_DEPTH: indentation would grow with depth
        '{"bad": "\\ud800"}',  # a lone surrogate escape: kept as an escape
        "[" + "1," * 200_000 + "1]",  # past READABLE_JSON_CHARS
    ],
)
def test_json_that_pretty_printing_would_blow_up_or_break_is_diffed_as_it_is(text):
    (change,) = diff_content(Content(data={"k": text + "\n"}), Content(data={"k": "[\n  1\n]\n"}))
    assert change.unified().splitlines()[3] == "-" + text


def test_a_lone_surrogate_escape_in_a_live_flag_document_reads_as_no_document():
    stamps = '"metadata": {"sluiceCommit": "' + COMMIT + '", "sluiceSource": "shop"}'
    lone = "{" + stamps + ', "flags": {"x\\ud800": {}}}'
    assert published_document(lone) is None
    assert published_document('{"flags": {"x\\ud83d\\ude00": {}}}') == {"flags": {"x😀": {}}}
    assert stamp_of(published_flag_set(lone)).as_applied is False


def test_a_published_baseline_is_a_flag_set_a_repository_could_hold():
    valid = {
        "flags": {"f": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}}
    }
    assert published_baseline(json.dumps(valid), DEFAULT_LIMITS) == valid
    for broken in ({"flags": "x"}, {"flags": [1]}, {"flags": {"f": 5}}, {"flags": {"f": {"state": "ON"}}}):
        assert published_baseline(json.dumps(broken), DEFAULT_LIMITS) is None
    assert published_baseline('{"flags": {"f": {"variants": {"a": NaN}}}}', DEFAULT_LIMITS) is None


def test_a_set_published_with_a_weight_written_as_a_decimal_is_still_a_canarys_old_side():
    """Git refuses a fractional weight written 50.0 since 2026-12-06; a set published before that is
    still read as what the cluster serves, or every canary of it (the fix to 50 included) was refused as
    an unreadable, hand-edited set."""
    flag = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", 50.0], ["off", 50]]},
    }
    published = {"flags": {"f": flag}}
    assert published_baseline(json.dumps(published), DEFAULT_LIMITS) == published
    twelve_and_a_half = {"flags": {"f": {**flag, "targeting": {"fractional": [["on", 12.5], ["off", 87]]}}}}
    assert published_baseline(json.dumps(twelve_and_a_half), DEFAULT_LIMITS) is None


def apply_unified(old_lines: list[str], diff_lines: list[str]) -> list[str]:
    """Applies a unified diff's hunks to ``old_lines``, checking every context and removed line."""
    result, position, index = [], 0, 2
    while index < len(diff_lines):
        header = diff_lines[index].split()
        start, _, _ = header[1][1:].partition(",")
        start = int(start) - 1 if "," not in header[1] or not header[1].endswith(",0") else int(start)
        result += old_lines[position:start]
        position, index = start, index + 1
        while index < len(diff_lines) and not diff_lines[index].startswith("@@"):
            mark, line = diff_lines[index][0], diff_lines[index][1:]
            if mark in " -":
                assert old_lines[position] == line
                position += 1
            if mark in " +":
                result.append(line)
            index += 1
    return result + old_lines[position:]


lines_strategy = st.lists(st.sampled_from(["a\n", "b\n", "c\n", "\n", "d\n"]), max_size=40)


@given(lines_strategy, lines_strategy)
def test_the_unified_text_turns_the_old_side_into_the_new(old, new):
    from gitops.plan.diff import _unified_lines

    text = _unified_lines(old, new, "live", "git")
    assert (text == []) == (old == new)
    assert apply_unified(old, text) == new


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "old, new",
    [
        # Every other line of an 8,000-line file edited: difflib alone, over 5 s.
        (
            [f"line {i}\n" for i in range(8000)],
            [f"line {i}\n" if i % 2 else f"edited {i}\n" for i in range(8000)],
        ),
        # 100,000 blank lines against a file of 199, 100 of them blank: about a minute.
        (["\n"] * 100_000, ["\n" if i % 2 else f"line {i}\n" for i in range(199)]),
        # Each line four times over, in another order.
        (
            [f"x{i}\n" for i in range(5000) for _ in range(4)],
            [f"x{i}\n" for i in reversed(range(5000)) for _ in range(4)],
        ),
    ],
)
def test_a_unified_text_is_found_in_bounded_time_whatever_the_sides_hold(old, new):
    from gitops.plan.diff import _unified_lines

    assert apply_unified(old, _unified_lines(old, new, "live", "git")) == new


def test_an_ordinary_change_keeps_difflibs_hunks():
    import difflib

    from gitops.plan.diff import _unified_lines

    old = [f"key.{i}=value-{i}\n" for i in range(2000)]
    new = [*old[:700], "key.700=changed\n", *old[701:1500], *old[1501:]]
    assert _unified_lines(old, new, "live", "git") == list(difflib.unified_diff(old, new, "live", "git"))


# JSON's own values as a manifest or a content holds them (no floats: see ``compact_json``), with
# integers past 64 bits and keys of any text, which orjson refuses or writes as UTF-8: json takes those.
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON_VALUES)
def test_compact_json_is_json_s_compact_ascii_text_character_for_character(value):
    assert compact_json(value) == json.dumps(value, separators=(",", ":"))


@given(_JSON_VALUES)
def test_the_text_a_content_hash_is_taken_of_is_json_s_byte_for_byte(value):
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert sorted_json_utf8(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"a": "\ud800"},  # a lone surrogate: orjson refuses it
        {"big": 2**70, "small": -(2**63) - 1},  # past 64 bits
        {"smile": "😀", "é": "\x00\x1f\x7f\u2028\ufeff"},  # UTF-8 from orjson: json escapes it
        [True, None, 0, -1, 2**63 - 1, "", {}],
        {"k": "a\x7fb"},  # DEL, ASCII: json escapes it, orjson writes it raw
    ],
)
def test_compact_json_leaves_to_json_what_orjson_writes_otherwise_or_refuses(value):
    assert compact_json(value) == json.dumps(value, separators=(",", ":"))


def test_values_json_refuses_are_refused_the_same_way():
    when = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)
    for refused in ({"when": when}, {1.5: "a float key is written by json"}, Content()):
        try:
            expected: object = json.dumps(refused, separators=(",", ":"))
        except TypeError as exc:
            expected = type(exc)
        try:
            got: object = compact_json(refused)
        except TypeError as exc:
            got = type(exc)
        assert got == expected
    with pytest.raises(UnicodeEncodeError):  # as ``.encode()`` of json's text raised
        sorted_json_utf8({"a": "\udc80"})


def test_a_content_hash_is_what_it_was():
    """Stored in clusters' annotations and the change log: a new encoder must not change one."""
    content = Content(
        data={"b": "2\n", "a": "é 😀 \x00"}, labels={"app": "x"}, annotations={"z": ""}, immutable=True
    )
    canonical = json.dumps(content.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert content.hash == hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert Content(data={"k": "v"}).hash == "6248b6d64bc25e41d675dba945199286"  # as computed before orjson


def test_without_orjson_the_texts_are_json_s(monkeypatch):
    """The offline validator is installed with PyYAML alone: content hashes come out the same."""
    value = {"b": ["é", 2**70, None], "a": {"x": True}}
    fast = (compact_json(value), sorted_json_utf8(value), Content(data={"k": "v"}).hash)
    monkeypatch.setattr(storable, "_orjson", None)
    assert (compact_json(value), sorted_json_utf8(value), Content(data={"k": "v"}).hash) == fast


# What the apiserver writes: integers within int64, finite floats, any text.
_API_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_API_VALUES, st.booleans())
def test_json_value_reads_what_json_reads(value, ascii_text):
    text = json.dumps(value, ensure_ascii=ascii_text)
    assert json_value(text.encode()) == json.loads(text)
    assert json_value(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":NaN,"b":-Infinity}',  # not JSON, but json's reading
        b'{"a":1e400}',  # past a double: json reads inf
        b'{"a":"\\ud800"}',  # a lone surrogate escape
        b'\xef\xbb\xbf{"a":1}',  # a byte order mark
        b'{"a":"\xff"}',  # not UTF-8
        b'{"a":1',  # not even JSON
        b'{"a":1,"a":2}',  # the last of a duplicate key
    ],
)
def test_json_value_leaves_to_json_what_orjson_refuses(text):
    def outcome(read):
        try:
            return read(text)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
            return type(exc)

    expected = outcome(json.loads)
    got = outcome(json_value)
    assert repr(got) == repr(expected)  # nan is not equal to itself; its repr is


def test_an_apply_body_holding_del_stays_readable_by_the_apiserver_s_parser():
    """DEL is ASCII, and the apiserver's YAML parser refuses it raw: the body must carry its escape."""
    body = compact_json({"data": {"k": "a\x7fb"}})
    assert body == '{"data":{"k":"a\\u007fb"}}'
    assert yaml.load(body, Loader=yaml.CSafeLoader) == {"data": {"k": "a\x7fb"}}
