"""The change-log export streams, without content bodies unless asked (issue 10, section 4).

Memory is measured with tracemalloc while the response is consumed: a bound, not a time.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import tracemalloc

import pytest
from django.test import Client
from django.urls import reverse

from tests import history

pytestmark = pytest.mark.django_db(transaction=True)
ROWS = 600
BODY_BYTES = 16 * 1024  # each row holds 32 KiB of before/after content: about 19 MiB in all
MEMORY_BOUND = 8 * 1024 * 1024


@pytest.fixture
def big_log(make_source, people):
    source = make_source()
    history.changes(history.rollout(source), ROWS, body_bytes=BODY_BYTES, intent_bodies=False)
    client = Client()
    client.force_login(people["viewer"])
    return source, client


def consume(response) -> tuple[bytes, int]:
    """The whole body, and the peak of memory allocated while producing it.

    The body goes to a file as it streams, so only what the server holds is measured.
    """
    with tempfile.TemporaryFile() as sink:
        tracemalloc.start()
        try:
            for chunk in response.streaming_content:
                sink.write(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        sink.seek(0)
        return sink.read(), peak


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_an_export_streams_in_bounded_memory_without_bodies(big_log, kind):
    source, client = big_log
    response = client.get(reverse("dashboard:changes"), {"source": source.name, "format": kind})
    assert response.streaming, "the export must stream"

    body, peak = consume(response)

    assert peak < MEMORY_BOUND, f"exporting {ROWS} rows took {peak / 2**20:.1f} MiB"
    if kind == "json":
        rows = json.loads(body)
        assert "before" not in rows[0]
        assert "after" not in rows[0]
    else:
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert "before" not in rows[0]
    assert len(rows) == ROWS
    assert b"a" * 100 not in body


def test_bodies_are_exported_when_asked_still_streaming(big_log):
    source, client = big_log
    response = client.get(
        reverse("dashboard:changes"), {"source": source.name, "format": "json", "bodies": "1"}
    )
    assert response.streaming
    body, peak = consume(response)
    rows = json.loads(body)
    assert len(rows) == ROWS
    assert rows[0]["after"] == {"data": {"blob": "a" * BODY_BYTES}}
    # Bodies are read a small chunk at a time: far less than the 19 MiB they add up to.
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_an_export_cut_at_its_limit_says_so(big_log, kind, monkeypatch):
    """The export stopped at its limit, newest first, and looked whole: an auditor's file lacked every
    older entry without a word. Its name and a header now say it holds the newest entries only."""
    from dashboard import views

    source, client = big_log
    monkeypatch.setattr(views, "EXPORT_LIMIT", 100)
    response = client.get(reverse("dashboard:changes"), {"source": source.name, "format": kind})
    body, _ = consume(response)

    assert response["X-Sluice-Export-Truncated"] == "100"
    assert f'filename="sluice-changes-newest-100.{kind}"' in response["Content-Disposition"]
    rows = json.loads(body) if kind == "json" else list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == 100

    monkeypatch.setattr(views, "EXPORT_LIMIT", ROWS)
    whole = client.get(reverse("dashboard:changes"), {"source": source.name, "format": kind})
    consume(whole)
    assert "X-Sluice-Export-Truncated" not in whole
    assert f'filename="sluice-changes.{kind}"' in whole["Content-Disposition"]
