"""Whole numbers read from text someone else wrote: a query string, a response header. Pure.

``str.isdigit`` is true for "²" and "٣": ``int`` refuses the first and reads the second, and refuses
any text past 4,300 digits. A page number or an id from a query string must give the page, not a 500.
"""

from __future__ import annotations

# 2**63 - 1, PostgreSQL's bigint: the largest id a row can have.
MAX_ROW_ID = 9_223_372_036_854_775_807
_MAX_DIGITS = len(str(MAX_ROW_ID))


def whole_number(text: str, *, maximum: int = MAX_ROW_ID) -> int | None:
    """``text`` as an int when it is ASCII digits only and at most ``maximum``; otherwise None."""
    if not (0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= maximum else None
