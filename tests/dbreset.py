"""Empties the database after a transactional test for a fraction of what Django's flush costs.

Django's ``TransactionTestCase`` ends each test with the ``flush`` command: one TRUNCATE of every
table, then the ``post_migrate`` signal, which writes the content types, the permissions and
Sluice's role groups back (``gitops.roles.ensure_roles``). On this stack that is 0.2 to 0.3 s a
test, paid by some 400 integration tests: TRUNCATE's cost grows with the number of tables named
(each gets new files), and the signal makes a few dozen queries to write back what it had just
emptied.

``DatabaseReset`` gives the same end state for less:

- The first reset of a run is Django's own flush; then the *static* tables, those ``post_migrate``
  writes (``STATIC_MODELS``), are fingerprinted.
- Every later reset compares the fingerprint (one query). If a test changed a static table, the
  reset is Django's flush again, and the fingerprint is taken anew. Otherwise it locks the other
  tables, finds those holding a row (one query) and TRUNCATEs them, with CASCADE, in the same
  transaction; no signal is sent, as the static tables already hold exactly what it would write.

The lock makes the reset wait, as Django's TRUNCATE of every table does, for a writer still at work
when the test ended (the Celery worker, a server thread), so its rows are seen and emptied too.
It waits politely: a writer that holds one table and then asks for another the reset already
locked would deadlock with it, and PostgreSQL would end one of the two after ``deadlock_timeout``
(1 s): a test's teardown failed so. So each attempt gives up a lock it waited ``LOCK_TIMEOUT`` for,
well before that, rolls back (freeing what it had locked, so the writer finishes) and tries again,
until ``GIVE_WAY_FOR`` has passed; Django's flush is retried the same way.
CASCADE reaches only tables that refer to a truncated one; the static tables refer only to each
other, so it never empties them (``tests/integration/test_database_reset.py`` checks both that and
that ``post_migrate`` writes nothing else). Triggers: ``gitops_managedobject``'s TRUNCATE trigger
bumps rows of ``gitops_inventoryversion``, which holds rows only when it is in the same TRUNCATE, as
under Django's flush; the change log's and the audit trails' refuse a TRUNCATE unless the session set
``sluice.allow_truncate``, which the test process's connections do (``tests/conftest.py``). Each
test therefore starts with every other table empty and the static tables as ``post_migrate``
leaves them; only their ids stop changing from test to test.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import CommandError, call_command
from django.db import OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import TransactionTestCase

# What post_migrate writes: the content types and permissions (Django), the role groups (Sluice).
STATIC_MODELS = (ContentType, Permission, Group, Group.permissions.through)

# Shorter than PostgreSQL's deadlock_timeout (1 s), so the reset is the side that gives way.
LOCK_TIMEOUT = "200ms"
GIVE_WAY_FOR = 60.0  # seconds; then one last attempt waits as long as the writer takes
# lock_not_available (lock_timeout ran out) and deadlock_detected: the attempt was rolled back.
GAVE_WAY = {"55P03", "40P01"}


def tables_of_flush(connection: BaseDatabaseWrapper) -> list[str]:
    """The tables Django's flush empties: its models' tables, views left out."""
    return sorted(connection.introspection.django_table_names(only_existing=True, include_views=False))


def static_tables() -> list[str]:
    return sorted(model._meta.db_table for model in STATIC_MODELS)


class DatabaseReset:
    """One per database: remembers its static tables' fingerprint between tests."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.emptied_tables: list[str] = []  # by the quick reset: every flushed one but the static
        self.fingerprint: tuple[str, ...] | None = None

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.database]

    def reset(self, django_flush: Callable[[], None]) -> None:
        if self.fingerprint is None or self._fingerprint() != self.fingerprint:
            self._giving_way(django_flush)
            static = static_tables()
            self.emptied_tables = [table for table in tables_of_flush(self.connection) if table not in static]
            self.fingerprint = self._fingerprint()
            return
        if self.emptied_tables:
            self._giving_way(self._empty_tables_holding_rows)

    def _giving_way(self, attempt: Callable[[], None]) -> None:
        """Runs ``attempt`` (one transaction) again while it gives way to a writer, then once waiting."""
        deadline = time.monotonic() + GIVE_WAY_FOR
        while time.monotonic() < deadline:
            try:
                with self._lock_timeout(LOCK_TIMEOUT):
                    attempt()
                return
            except (OperationalError, CommandError) as error:
                if not _gave_way(error):
                    raise
        attempt()

    @contextmanager
    def _lock_timeout(self, timeout: str) -> Iterator[None]:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", [timeout])
        try:
            yield
        finally:
            with self.connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")

    def _empty_tables_holding_rows(self) -> None:
        quote = self.connection.ops.quote_name
        with transaction.atomic(using=self.database), self.connection.cursor() as cursor:
            cursor.execute(
                f"LOCK TABLE {', '.join(map(quote, self.emptied_tables))} IN SHARE ROW EXCLUSIVE MODE"
            )
            holding_rows = self._holding_rows(cursor)
            if holding_rows:
                cursor.execute(f"TRUNCATE {', '.join(map(quote, holding_rows))} CASCADE")

    def _holding_rows(self, cursor) -> list[str]:
        quote = self.connection.ops.quote_name
        query = " UNION ALL ".join(
            f"SELECT %s WHERE EXISTS (SELECT 1 FROM {quote(table)})"  # noqa: S608 - Django's own table names
            for table in self.emptied_tables
        )
        cursor.execute(query, self.emptied_tables)
        return [row[0] for row in cursor.fetchall()]

    def _fingerprint(self) -> tuple[str, ...]:
        """A digest of each static table's rows, ids included, in a stable order: any insert,
        update or delete changes it."""
        quote = self.connection.ops.quote_name
        digests = ", ".join(
            f"(SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {quote(table)} t)"  # noqa: S608
            for table in static_tables()
        )
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT {digests}")
            return tuple(cursor.fetchone())


def _gave_way(error: BaseException | None) -> bool:
    """Whether the database ended the attempt for a lock (Django, and flush's CommandError, wrap it)."""
    while error is not None:
        if getattr(error, "sqlstate", None) in GAVE_WAY:
            return True
        error = error.__cause__
    return False


DJANGO_TEARDOWN = TransactionTestCase._fixture_teardown
_resets: dict[str, DatabaseReset] = {}


def quick_teardown(case: TransactionTestCase) -> None:
    """Takes the place of ``TransactionTestCase._fixture_teardown`` (tests/integration/conftest.py)."""
    # A test that names its apps, restores a serialized copy or resets sequences keeps Django's
    # teardown: each relies on the flush writing the static tables anew, or on it not doing so.
    if case.available_apps is not None or case.serialized_rollback or case.reset_sequences:
        DJANGO_TEARDOWN(case)
        return
    for database in case._databases_names(include_mirrors=False):
        if database not in _resets:
            _resets[database] = DatabaseReset(database)
        _resets[database].reset(functools.partial(django_flush, database))


def django_flush(database: str) -> None:
    """What Django's teardown runs for one database when the test names no apps."""
    call_command("flush", verbosity=0, interactive=False, database=database, reset_sequences=False)
