"""``tests.dbreset``: the quicker end of a transactional test leaves what Django's flush leaves."""

from __future__ import annotations

import inspect
import json
import threading

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.contrib.sessions.models import Session
from django.db import close_old_connections, connection, connections, transaction
from django.test import TransactionTestCase
from django.utils import timezone

from tests.dbreset import (
    DJANGO_TEARDOWN,
    DatabaseReset,
    django_flush,
    quick_teardown,
    static_tables,
    tables_of_flush,
)
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)


def _rows_without_ids() -> dict[str, list[str]]:
    """Every flushed table's rows as comparable text, without ids and references to them (a flush
    renews both): what the static tables hold is compared by name in ``_roles``."""
    snapshot = {}
    with connection.cursor() as cursor:
        for table in tables_of_flush(connection):
            cursor.execute(f"SELECT to_jsonb(t) FROM {connection.ops.quote_name(table)} AS t")  # noqa: S608
            rows = [json.loads(row[0]) if isinstance(row[0], str) else row[0] for row in cursor.fetchall()]
            kept = [{key: row[key] for key in row if key != "id" and not key.endswith("_id")} for row in rows]
            snapshot[table] = sorted(json.dumps(row, sort_keys=True) for row in kept)
    return snapshot


def _roles() -> dict[str, list[str]]:
    """Each group's permissions, by name."""
    return {
        group.name: sorted(f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all())
        for group in Group.objects.prefetch_related("permissions__content_type")
    }


def _permission_ids() -> list[int]:
    return list(Permission.objects.order_by("pk").values_list("pk", flat=True))


def _flushes_made_by(reset: DatabaseReset) -> int:
    """Runs one reset; how many times it fell back to Django's flush (0 or 1)."""
    flushes = []

    def flush() -> None:
        flushes.append(1)
        django_flush("default")

    reset.reset(flush)
    return len(flushes)


def _write_what_a_test_writes(make_source) -> None:
    admin = User.objects.create_user("root", password="x")
    admin.groups.add(Group.objects.get(name="admin"))
    make_source(name="kept-nowhere")
    # A table no foreign key ties to any other: only being named finds it.
    Session.objects.create(session_key="k" * 32, session_data="", expire_date=timezone.now())


def test_every_transactional_test_ends_with_the_quick_reset():
    assert TransactionTestCase._fixture_teardown is quick_teardown
    # The hook replaces a private method: should Django stop calling it, say so rather than quietly
    # flushing as before.
    assert "self._fixture_teardown()" in inspect.getsource(TransactionTestCase._post_teardown)


def test_post_migrate_writes_only_the_static_tables_and_they_refer_to_no_other():
    django_flush("default")
    reset = DatabaseReset("default")
    reset.reset(lambda: None)  # learns the tables and takes the fingerprint
    with connection.cursor() as cursor:
        holding_rows = reset._holding_rows(cursor)
    assert holding_rows == [], "post_migrate wrote a table the quick reset would empty"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
            " WHERE contype = 'f' AND conrelid::regclass::text = ANY(%s)",
            [static_tables()],
        )
        references = cursor.fetchall()
    assert references, "the static tables refer to each other"
    assert {referred for _, referred in references} <= set(static_tables()), (
        "TRUNCATE ... CASCADE of a table a static one refers to would empty the static one"
    )


def test_a_reset_empties_what_a_test_wrote_as_a_flush_does_without_flushing(make_source):
    reset = DatabaseReset("default")
    assert _flushes_made_by(reset) == 1, "the first reset of a run is Django's own flush"
    after_flush, roles, permission_ids = _rows_without_ids(), _roles(), _permission_ids()
    assert set(roles) == {"viewer", "approver", "admin"}

    _write_what_a_test_writes(make_source)
    assert _rows_without_ids() != after_flush
    assert _flushes_made_by(reset) == 0, "nothing static changed: no flush, no post_migrate"
    assert _rows_without_ids() == after_flush
    assert _roles() == roles
    assert _permission_ids() == permission_ids


def _approvers_lose_their_permissions() -> None:
    Group.objects.get(name="approver").permissions.clear()


def _a_permission_is_renamed() -> None:
    Permission.objects.filter(codename="view_change").update(name="renamed")


def _a_group_is_added() -> None:
    Group.objects.create(name="auditor")


@pytest.mark.parametrize(
    "change", [_approvers_lose_their_permissions, _a_permission_is_renamed, _a_group_is_added]
)
def test_a_test_that_changed_what_post_migrate_writes_gets_django_s_flush(make_source, change):
    reset = DatabaseReset("default")
    _flushes_made_by(reset)
    after_flush, roles = _rows_without_ids(), _roles()

    _write_what_a_test_writes(make_source)
    change()
    assert _flushes_made_by(reset) == 1
    assert _rows_without_ids() == after_flush
    assert _roles() == roles
    assert _flushes_made_by(reset) == 0, "the fingerprint is taken again after the flush"


def test_a_reset_waits_for_a_writer_still_at_work_and_empties_its_rows_too():
    reset = DatabaseReset("default")
    _flushes_made_by(reset)
    written, commit = threading.Event(), threading.Event()

    def writer() -> None:
        try:
            with transaction.atomic():
                Session.objects.create(session_key="w" * 32, session_data="", expire_date=timezone.now())
                written.set()
                commit.wait(timeout=30)
        finally:
            connections.close_all()

    flushes = []

    def resetter() -> None:
        try:
            reset.reset(lambda: flushes.append(1))
        finally:
            connections.close_all()

    writing = threading.Thread(target=writer)
    writing.start()
    assert written.wait(timeout=30)
    resetting = threading.Thread(target=resetter)
    resetting.start()
    poll(lambda: not resetting.is_alive() or _a_backend_waits_for_a_lock(), timeout=30, what="the reset")
    commit.set()
    writing.join(timeout=30)
    resetting.join(timeout=30)
    close_old_connections()
    assert not Session.objects.exists(), "a row committed while the reset checked survived it"
    assert flushes == [], "nothing static changed"


def test_a_reset_gives_way_to_a_writer_that_would_deadlock_with_it():
    """The writer holds a table the reset locks late (sessions) and then asks for one it has already
    locked (users): waiting on both sides, PostgreSQL would end one of them, as it ended a test's
    teardown. The reset gives way instead; both finish, and the writer's rows are emptied."""
    reset = DatabaseReset("default")
    _flushes_made_by(reset)
    assert reset.emptied_tables.index("auth_user") < reset.emptied_tables.index("django_session")
    written, go_on = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with transaction.atomic():
                Session.objects.create(session_key="w" * 32, session_data="", expire_date=timezone.now())
                written.set()
                go_on.wait(timeout=30)
                User.objects.create_user("late-writer", password="x")
        except BaseException as error:
            failures.append(error)
        finally:
            connections.close_all()

    def resetter() -> None:
        try:
            reset.reset(lambda: None)
        except BaseException as error:
            failures.append(error)
        finally:
            connections.close_all()

    writing = threading.Thread(target=writer)
    writing.start()
    assert written.wait(timeout=30)
    resetting = threading.Thread(target=resetter)
    resetting.start()
    poll(_a_backend_waits_for_a_lock, timeout=30, what="the reset to wait for the sessions table")
    go_on.set()
    writing.join(timeout=60)
    resetting.join(timeout=60)
    assert not writing.is_alive() and not resetting.is_alive()
    close_old_connections()
    assert failures == []
    assert not Session.objects.exists() and not User.objects.exists(), "the writer's rows survived"


def _a_backend_waits_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(cursor.fetchone()[0])


class _Plain(TransactionTestCase):
    pass


class _NamingItsApps(TransactionTestCase):
    available_apps = ["gitops"]


def test_the_installed_teardown_keeps_the_static_tables_and_leaves_special_cases_to_django(make_source):
    _Plain(methodName="__init__")._fixture_teardown()  # the run's reset has its fingerprint from here
    permission_ids = _permission_ids()
    _write_what_a_test_writes(make_source)
    _Plain(methodName="__init__")._fixture_teardown()
    assert not User.objects.exists() and not Session.objects.exists()
    assert _permission_ids() == permission_ids

    _NamingItsApps(methodName="__init__")._fixture_teardown()
    # Django's teardown for a test naming its apps: everything emptied, and no post_migrate.
    assert not Permission.objects.exists()
    assert DJANGO_TEARDOWN is not quick_teardown
