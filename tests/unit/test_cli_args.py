"""Command-line arguments that once passed as nonsense: a negative --limit, a token valid for centuries."""

from __future__ import annotations

import importlib
from argparse import ArgumentTypeError
from datetime import timedelta

import pytest

from gitops.management.commands.gitops import _positive

api_token = importlib.import_module("dashboard.management.commands.api-token")


def test_a_limit_is_a_whole_number_of_at_least_one() -> None:
    """``gitops log --limit -5`` printed nothing and succeeded."""
    assert _positive("5") == 5
    for wrong in ["-5", "0", "five"]:
        with pytest.raises(ArgumentTypeError):
            _positive(wrong)


def test_a_token_lasts_at_most_a_hundred_years() -> None:
    """``--expires-in 99999999999d`` ended in an OverflowError's traceback."""
    assert api_token.duration("90d") == timedelta(days=90)
    with pytest.raises(ArgumentTypeError, match="longer than 100 years"):
        api_token.duration("99999999999d")
