"""An apply body as the apiserver reads it: YAML (JSON being YAML), whose parser refuses the surrogate
pair escapes Python's JSON writes for a character beyond U+FFFF. ``_yaml_readable`` writes those as
YAML's ``\\U`` escapes and leaves everything else as it was. The real apiserver's answer is in
tests/integration/test_apply_transport.py; here, PyYAML reads the body back (it decodes a pair as two
lone surrogates, so it cannot pass on the unmended body) over many strings."""

from __future__ import annotations

import json

import yaml
from hypothesis import given
from hypothesis import strategies as st

from gitops.cluster.client import _yaml_readable


def body(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def test_an_emoji_is_written_as_one_yaml_escape():
    assert _yaml_readable(body({"v": "smile 😀"})) == '{"v":"smile \\U0001f600"}'


def test_a_body_without_a_pair_is_returned_as_it_is():
    text = body({"v": "한국어 \\ud83d\\ude00 é\n\t\x00"})  # Hangul is \ud55c..., not a pair
    assert _yaml_readable(text) == text
    assert yaml.safe_load(_yaml_readable(text)) == json.loads(text)


def test_an_escaped_backslash_before_u_is_not_taken_for_a_pair():
    literal = "\\ud83d\\ude00"  # the twelve characters, backslashes included, not an emoji
    assert _yaml_readable(body({"v": literal})) == body({"v": literal})
    mixed = "\\" + "😀" + "\\\\ud83d\\ude00😀"
    assert yaml.safe_load(_yaml_readable(body({"v": mixed}))) == {"v": mixed}


def test_upper_case_hex_is_read_too():
    assert _yaml_readable('{"v":"\\uD83D\\uDE00"}') == '{"v":"\\U0001f600"}'


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=40), max_size=5))
def test_yaml_reads_the_body_back_as_the_value_it_encodes(value):
    assert yaml.safe_load(_yaml_readable(body(value))) == value
