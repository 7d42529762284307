"""The JSON document a batch of rows travels in (``record.bulk._document``): through orjson, or json
for what orjson refuses, PostgreSQL must read the same values. Pure; the real INSERT is in
tests/integration/test_bulk_rows.py."""

from __future__ import annotations

import datetime
import json
import zoneinfo

import pytest

from gitops.record import bulk

COLUMNS = {"id", "at", "manifest", "after"}


def _both(rows, encoded=None):
    return bulk._document(rows, encoded, COLUMNS), bulk._json_document(rows, encoded, COLUMNS)


@pytest.mark.parametrize(
    "at",
    [
        datetime.datetime(2026, 12, 5, 11, 0, tzinfo=datetime.UTC),
        datetime.datetime(2026, 12, 5, 11, 0, 0, 123456, tzinfo=datetime.UTC),
        datetime.datetime(2026, 12, 5, 11, 0),  # naive
        # An offset of seconds, which orjson's own datetimes round to minutes: 30 s off in PostgreSQL.
        datetime.datetime(2026, 12, 5, 11, 0, tzinfo=datetime.timezone(datetime.timedelta(seconds=30))),
        datetime.datetime(1900, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Amsterdam")),
        datetime.date(2026, 12, 5),
    ],
)
def test_dates_and_datetimes_are_written_as_isoformat_writes_them(at):
    fast, slow = _both([{"id": 1, "at": at}])
    assert json.loads(fast) == json.loads(slow) == [{"id": 1, "at": at.isoformat()}]


def test_encoded_texts_are_spliced_as_they_are():
    rows = [{"id": 1, "manifest": None, "after": {"data": {"é": "😀\x00"}}}, {"id": 2, "manifest": None}]
    encoded = [{"manifest": '{"kind":"ConfigMap","data":{"k":"\\u007f"}}'}, {"manifest": None}]
    fast, slow = _both(rows, encoded)
    assert json.loads(fast) == json.loads(slow)
    assert '"manifest":{"kind":"ConfigMap","data":{"k":"\\u007f"}}' in fast


def test_what_orjson_refuses_goes_through_json_and_what_json_refuses_is_refused():
    rows = [{"id": 2**70, "at": datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)}]
    assert bulk._document(rows, None, COLUMNS) == bulk._json_document(rows, None, COLUMNS)
    with pytest.raises(TypeError, match="time cannot go into a JSON row"):
        bulk._document([{"id": 1, "at": datetime.time(11)}], None, COLUMNS)
    with pytest.raises(ValueError, match="no column 'colour'"):
        bulk._document([{"id": 1}], [{"colour": '"red"'}], COLUMNS)
