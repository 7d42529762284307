"""An apply body as the apiserver reads it: YAML (JSON being YAML), whose parser refuses the surrogate
pair escapes Python's JSON writes for a character beyond U+FFFF. ``_yaml_readable`` writes those as
YAML's ``\\U`` escapes and leaves everything else as it was. The real apiserver's answer is in
tests/integration/test_apply_transport.py; here libyaml, which the apiserver's parser was ported
from and which refuses a pair escape as it does, reads the body back over many strings."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gitops.cluster.client import _yaml_readable


def body(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def read_as_the_apiserver(text: str) -> object:
    assert text.isascii(), "the apiserver's parser refuses a raw BOM, DEL or C1 control: send escapes"
    return yaml.load(text, Loader=yaml.CSafeLoader)


def test_an_emoji_is_written_as_one_yaml_escape():
    assert _yaml_readable(body({"v": "smile 😀"})) == '{"v":"smile \\U0001f600"}'


def test_a_body_without_a_pair_is_returned_as_it_is():
    text = body({"v": "한국어 \\ud83d\\ude00 é\n\t\x00"})  # Hangul is \ud55c..., not a pair
    assert _yaml_readable(text) == text
    assert read_as_the_apiserver(_yaml_readable(text)) == json.loads(text)


def test_an_escaped_backslash_before_u_is_not_taken_for_a_pair():
    literal = "\\ud83d\\ude00"  # the twelve characters, backslashes included, not an emoji
    assert _yaml_readable(body({"v": literal})) == body({"v": literal})
    mixed = "\\" + "😀" + "\\\\ud83d\\ude00😀"
    assert read_as_the_apiserver(_yaml_readable(body({"v": mixed}))) == {"v": mixed}


def test_a_lone_low_surrogate_after_an_escaped_backslash_is_left_alone():
    # JSON text: an escaped backslash, "ud83d", then a lone low surrogate escape. Not a pair.
    text = '{"v":"\\\\ud83d\\ude00"}'
    assert _yaml_readable(text) == text
    assert _yaml_readable('{"v":"\\\\\\ud83d\\ude00"}') == '{"v":"\\\\\\U0001f600"}'


def test_the_unmended_body_is_refused_by_the_parser():
    with pytest.raises(yaml.YAMLError):
        read_as_the_apiserver(body({"v": "😀"}))


def test_upper_case_hex_is_read_too():
    assert _yaml_readable('{"v":"\\uD83D\\uDE00"}') == '{"v":"\\U0001f600"}'


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=40), max_size=5))
def test_yaml_reads_the_body_back_as_the_value_it_encodes(value):
    assert read_as_the_apiserver(_yaml_readable(body(value))) == value
