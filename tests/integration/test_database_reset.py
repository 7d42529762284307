"""``tests.dbreset``: the quicker end of a transactional test leaves what Django's flush leaves."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.db import connection

from tests.dbreset import DatabaseReset, flushed_tables

pytestmark = pytest.mark.django_db(transaction=True)


def _flush() -> None:
    from django.core.management import call_command

    call_command("flush", verbosity=0, interactive=False, reset_sequences=False)


def _snapshot() -> dict[str, list[tuple]]:
    """Every flushed table's rows as comparable text, without ids and references to them (a flush
    renews both)."""
    snapshot = {}
    with connection.cursor() as cursor:
        for table in flushed_tables(connection):
            cursor.execute(f"SELECT to_jsonb(t) FROM {connection.ops.quote_name(table)} AS t")  # noqa: S608
            rows = [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in cursor.fetchall()]
            kept = [{key: row[key] for key in row if not _is_an_id(key)} for row in rows]
            snapshot[table] = sorted(json.dumps(row, sort_keys=True) for row in kept)
    return snapshot


def _is_an_id(column: str) -> bool:
    return column == "id" or column.endswith("_id")


def _counted(reset: DatabaseReset) -> list[str]:
    calls: list[str] = []

    def flush() -> None:
        calls.append("flush")
        _flush()

    reset.reset(flush)
    return calls


def _fill(make_source) -> None:
    admin = User.objects.create_user("root", password="x")
    admin.groups.add(Group.objects.get(name="admin"))
    make_source(name="kept-nowhere")


def test_a_reset_empties_what_a_test_wrote_like_a_flush_without_flushing(make_source):
    reset = DatabaseReset("default")
    assert _counted(reset) == ["flush"], "the first reset of a run is Django's own flush"
    after_flush = _snapshot()
    assert reset.static_tables, "post_migrate fills the content types, permissions and role groups"
    static_ids = list(Permission.objects.order_by("pk").values_list("pk", flat=True))

    _fill(make_source)
    assert _snapshot() != after_flush
    assert _counted(reset) == [], "nothing static changed: no flush, no post_migrate"
    assert _snapshot() == after_flush
    assert list(Permission.objects.order_by("pk").values_list("pk", flat=True)) == static_ids


def test_a_test_that_changed_a_role_gets_django_s_flush_and_the_roles_back(make_source):
    reset = DatabaseReset("default")
    _counted(reset)
    after_flush = _snapshot()

    _fill(make_source)
    Group.objects.get(name="approver").permissions.clear()
    assert _counted(reset) == ["flush"]
    assert _snapshot() == after_flush
    assert Group.objects.get(name="approver").permissions.filter(codename="approve_rollout").exists()

    Permission.objects.filter(codename="view_change").update(name="renamed")
    assert _counted(reset) == ["flush"], "an update, not only an insert or a delete, is noticed"
    assert _counted(reset) == [], "and the fingerprint is taken again after the flush"
    assert _snapshot() == after_flush
