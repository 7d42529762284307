"""Whole numbers from text someone else wrote (query strings, headers)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitops.numerals import MAX_ROW_ID, whole_number


@pytest.mark.parametrize("text, number", [("0", 0), ("7", 7), ("007", 7), (str(MAX_ROW_ID), MAX_ROW_ID)])
def test_ascii_digits_read_as_their_number(text, number):
    assert whole_number(text) == number


@pytest.mark.parametrize(
    "text", ["", "²", "٣", "1²", "-1", "+1", " 1", "1.0", "1_000", str(MAX_ROW_ID + 1), "9" * 5000]
)
def test_anything_else_reads_as_none(text):
    assert whole_number(text) is None


def test_a_number_past_the_maximum_reads_as_none():
    assert whole_number("100", maximum=99) is None
    assert whole_number("99", maximum=99) == 99


@given(st.text(max_size=30))
def test_no_text_raises(text):
    number = whole_number(text)
    assert number is None or (0 <= number <= MAX_ROW_ID and text.isascii())
