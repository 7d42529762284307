"""Beat's sweep claims one source at a time; a database error keeps the claims already made."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from gitops.claims import each_claimed


def test_a_database_error_ends_the_claims_and_returns_those_already_made():
    asked: list[int] = []

    def claim(source_id: int) -> bool:
        asked.append(source_id)
        if source_id == 3:
            raise OperationalError("server closed the connection unexpectedly")
        return source_id != 2  # 2: another sweep claimed it first

    assert each_claimed([1, 2, 3, 4], claim, "due polls") == [1]
    assert asked == [1, 2, 3], "nothing is claimed after the error: the next sweep claims it"


def test_an_error_that_is_not_the_databases_is_raised():
    def claim(source_id: int) -> bool:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        each_claimed([1], claim, "due polls")
