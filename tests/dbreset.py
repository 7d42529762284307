"""Empties the database after a transactional test for a fraction of what Django's flush costs.

Django's ``TransactionTestCase`` ends each test with the ``flush`` command: one TRUNCATE of every
table, then the ``post_migrate`` signal, which fills the content types, the permissions and
Sluice's role groups again (``gitops.roles.ensure_roles``). On this stack that is 0.2 to 0.3 s a
test, paid by some 400 integration tests: TRUNCATE's cost grows with the number of tables named
(each gets new files), and the signal makes a few dozen queries to write back what it had just had.

``DatabaseReset`` gives the same end state for less:

- The first reset of a run is Django's own flush. The tables that are not empty right after it are
  what ``post_migrate`` writes; they are the *static* tables, and their content is fingerprinted.
- Every later reset compares the fingerprint (one query). If a test changed a static table, the
  reset is Django's flush again, and the fingerprint is taken anew. Otherwise it TRUNCATEs, with
  CASCADE, only the tables that hold a row (one query finds them), and sends no signal: the static
  tables already hold exactly what the signal would write.

So each test still starts with every other table empty and the static tables as ``post_migrate``
leaves them; only their ids stop changing from test to test. Triggers see what they saw: TRUNCATE
fires the same statement triggers on a table that held rows, and an empty table has nothing a
trigger could act on. Tables and sequences outside Django's flush are left alone, as Django leaves
them.
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper


def flushed_tables(connection: BaseDatabaseWrapper) -> list[str]:
    """The tables Django's flush empties: its models' tables, views left out."""
    return sorted(connection.introspection.django_table_names(only_existing=True, include_views=False))


class DatabaseReset:
    """One per database: remembers its static tables' fingerprint between tests."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.flushed_tables: list[str] = []
        self.static_tables: list[str] = []
        self.fingerprint: tuple[str, ...] | None = None

    @property
    def connection(self) -> BaseDatabaseWrapper:
        return connections[self.database]

    def reset(self, django_flush: Callable[[], None]) -> None:
        if self.fingerprint is None or self._fingerprint() != self.fingerprint:
            django_flush()
            self._learn_static_tables()
            return
        holding_rows = self._tables_holding_rows()
        if holding_rows:
            names = ", ".join(self.connection.ops.quote_name(table) for table in holding_rows)
            with transaction.atomic(using=self.database), self.connection.cursor() as cursor:
                cursor.execute(f"TRUNCATE {names} CASCADE")

    def _learn_static_tables(self) -> None:
        self.flushed_tables = flushed_tables(self.connection)
        self.static_tables = []  # so that the next line asks about every table
        self.static_tables = self._tables_holding_rows()
        self.fingerprint = self._fingerprint()

    def _tables_holding_rows(self) -> list[str]:
        quote = self.connection.ops.quote_name
        candidates = [table for table in self.flushed_tables if table not in self.static_tables]
        if not candidates:
            return []
        query = " UNION ALL ".join(
            f"SELECT %s WHERE EXISTS (SELECT 1 FROM {quote(table)})"  # noqa: S608 - Django's own table names
            for table in candidates
        )
        with self.connection.cursor() as cursor:
            cursor.execute(query, candidates)
            return [row[0] for row in cursor.fetchall()]

    def _fingerprint(self) -> tuple[str, ...]:
        """A digest of each static table's rows, in a stable order: any insert, update or delete
        changes it."""
        if not self.static_tables:
            return ()
        quote = self.connection.ops.quote_name
        digests = ", ".join(
            f"(SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {quote(table)} t)"  # noqa: S608
            for table in self.static_tables
        )
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT {digests}")
            return tuple(cursor.fetchone())
