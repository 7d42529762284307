"""SELECTs and UPDATEs a pass makes for every source, compiled to SQL once per process and run with
each call's values.

Django compiles a queryset to SQL every time it runs it. A push's pass asks the same questions of every
source (its newest rollouts, what it owes, the freezes in force...), with other ids, so the SQL is the
same each time and only the values differ; building and compiling those querysets was about a third of
a one-file pass's CPU in the worker (README, "Compiling a pass's SQL once"). A ``PreparedSelect`` builds
its queryset once, compiles it, and notes where each argument lands among the statement's parameters.
Each call then runs that statement with its own values in their places, and Django turns the rows into
models or tuples as it always does (the same iterables, converters and ``select_related``). A
``PreparedUpdate`` does the same for ``queryset.update(**values)``: its arguments may be in the filter or
among the values, and a call returns the rows changed.

What a builder may do, checked when it is first compiled:

- Each argument is an ``int``, a ``str`` or an aware ``datetime`` that the queryset compares as it is
  (``field=value``, ``field__gt=value``). The queryset is compiled twice, with two sets of stand-in
  values far apart (a 19-digit number and a small one, say): the two statements must be the same text
  and differ exactly where the arguments went, every other parameter equal. So a lookup that rewrites
  its value (``__startswith`` adds ``%``, ``__date`` takes the date) or a condition Django leaves out
  for one value (a number past an integer column's range) is refused, as is ``select_for_update``
  (Django checks it against the transaction when it compiles). A constant equal to a stand-in is the
  same in both compiles, so it stays a constant. What two compiles cannot see: a builder that computes
  from its argument something both stand-ins give alike (``value > 0``, ``value or default``). Use each
  argument only as a value compared in the statement.
- Everything else in the queryset is fixed: the builder must not read the clock, settings or the active
  time zone, as what it read then would be kept for good. ``SLUICE_PREPARED_CHECK`` (the test suite
  turns it on) compiles every call's queryset as well and refuses a difference, so a builder that
  breaks this fails the tests. (One that reads the clock is nearly always refused at once: its two
  compiles read two times.)
- A value of ``None``, a ``bool`` or a naive ``datetime`` is refused at each call: each would change the
  statement (``IS NULL``) or mean something else than the stand-in did.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.core.exceptions import EmptyResultSet, FieldError, ValidationError
from django.db import connections, router, transaction
from django.db.models import QuerySet
from django.db.models.sql.compiler import SQLCompiler
from django.db.models.sql.subqueries import UpdateQuery

Row = TypeVar("Row")

# What an argument may be: compared as it is, never None.
_KINDS = (int, str, datetime)


class PreparedMismatch(AssertionError):
    """A prepared statement is not what Django compiles for the same values (SLUICE_PREPARED_CHECK)."""


def _stand_in(kind: type, index: int, second: bool) -> Any:
    """Argument ``index``'s value for one of the two compiles: no constant of a queryset is either."""
    if kind is int:
        # Spaced apart differently in the two sets: an argument's value moved by a constant (b - 1) can
        # land on another argument's stand-in in one set, never in both.
        return 30_011 + 7 * index if second else 7_919_000_000_000_000_000 + index
    if kind is str:
        # The second one long: a builder that cuts its argument short (value[:40]) changes it in one only.
        return (
            f"Sluice Stand-in {index} " + "x" * 300 if second else f"\x1esluice-prepared-argument-{index}\x1e"
        )
    if second:
        return datetime(2001, 2, 3, 4, 5, 6, 100_000 + index, tzinfo=UTC)
    return datetime(2999, 12, 31, 23, 59, 59, 900_000 + index, tzinfo=UTC)


def _comparable(parameter: Any) -> tuple[type, Any]:
    """A parameter as two compiles can be compared: a database adapter's wrapper (psycopg's Jsonb) has
    no equality of its own, and its text is cut short."""
    wrapped = getattr(parameter, "obj", parameter)
    return type(parameter), wrapped


@dataclass(frozen=True)
class _Compiled:
    queryset: QuerySet[Any] = field(repr=False)  # printing it would run it
    sql: str
    parameters: tuple[Any, ...]
    # (parameter index, argument index, the parameter's type: the database adapter wraps some values,
    # an integer for a big integer column as psycopg's Int8, and each call's value is wrapped the same)
    places: tuple[tuple[int, int, type], ...]
    state: dict[str, Any] = field(repr=False)  # the compiler after as_sql: select, klass_info, col_count...

    @property
    def model(self) -> type[Any]:
        return self.queryset.model

    @property
    def using(self) -> str:
        return self.queryset.db


@dataclass(frozen=True)
class _CompiledUpdate:
    model: type[Any]
    using: str
    sql: str
    parameters: tuple[Any, ...]
    places: tuple[tuple[int, int, type], ...]


class _Bound(SQLCompiler):
    """A compiler that answers ``as_sql`` with the prepared statement and this call's parameters."""

    def __init__(self, compiled: _Compiled, parameters: tuple[Any, ...], query: Any, using: str) -> None:
        self.__dict__.update(compiled.state)
        self.query, self.using, self.connection = query, using, connections[using]
        self._statement = (compiled.sql, parameters)

    def as_sql(self, with_limits: bool = True, with_col_aliases: bool = False) -> tuple[str, tuple[Any, ...]]:
        return self._statement

    def pre_sql_setup(self, with_col_aliases: bool = False) -> Any:  # set up once, when it was compiled
        return None


class _Prepared:
    """What a prepared SELECT and a prepared UPDATE share: the arguments' kinds, where each lands among
    the statement's parameters (two compiles compared), and one statement per database."""

    _for_write = False

    def __init__(self, build: Callable[..., Any], *kinds: type) -> None:
        if not all(kind in _KINDS for kind in kinds):
            raise TypeError(f"arguments are int, str or datetime, not {kinds}")
        self.build, self.kinds = build, kinds
        self._compiled: dict[str, Any] = {}
        self._model: type[Any] | None = None
        self._refused: TypeError | None = None
        self._lock = threading.Lock()

    def _bound(self, compiled: Any, arguments: Sequence[Any]) -> tuple[Any, ...]:
        """The statement's parameters with this call's values (checked) in the arguments' places."""
        parameters = list(compiled.parameters)
        for place, argument, wrapper in compiled.places:
            value = arguments[argument]
            parameters[place] = value if type(value) is wrapper else wrapper(value)
        return tuple(parameters)

    def _check_arguments(self, arguments: Sequence[Any]) -> None:
        if len(arguments) != len(self.kinds):
            raise TypeError(f"{len(self.kinds)} arguments expected, got {len(arguments)}")
        for value, kind in zip(arguments, self.kinds, strict=True):
            # bool is an int to Python, and a naive datetime is not what the stand-in stood for.
            if type(value) is not kind or (isinstance(value, datetime) and value.tzinfo is None):
                raise TypeError(f"a prepared statement's argument must be {kind.__name__}, got {value!r}")

    def _route(self) -> str | None:
        """The database a call runs on, as Django would choose it for the model (None: not compiled yet)."""
        if self._model is None:
            return None
        return router.db_for_write(self._model) if self._for_write else router.db_for_read(self._model)

    def _compile(self, using: str | None) -> Any:
        raise NotImplementedError

    def _compiled_for(self) -> Any:
        # One statement per database: the one a router chooses for the model, as the queryset would.
        using = self._route()
        compiled = self._compiled.get(using) if using is not None else None
        if compiled is not None:
            return compiled
        with self._lock:
            if self._refused is not None:
                # Refused once, refused for good: a builder that passes only sometimes (one reading the
                # clock) must not pass later, in production, where nothing compares its statements.
                raise self._refused
            using = self._route()
            if using is not None and using in self._compiled:
                return self._compiled[using]
            try:
                compiled = self._compile(using)
            except TypeError as refused:
                self._refused = refused
                raise
            self._model = compiled.model
            self._compiled[compiled.using] = compiled
            return compiled

    def _places(self, first: Sequence[Any], second: Sequence[Any]) -> tuple[tuple[int, int, type], ...]:
        """Where each argument went: the parameters of the two compiles differ there and only there."""
        if len(first) != len(second):
            raise TypeError(f"{self._name()}: its parameters change in number with its arguments' values")
        places = []
        for place, (one, other) in enumerate(zip(first, second, strict=True)):
            if _comparable(one) == _comparable(other):
                continue
            argument = next(
                (
                    index
                    for index, kind in enumerate(self.kinds)
                    if isinstance(one, kind)
                    and one == _stand_in(kind, index, False)
                    and other == _stand_in(kind, index, True)
                ),
                None,
            )
            if argument is None:
                raise TypeError(f"{self._name()}: parameter {place} is not an argument as it was given")
            places.append((place, argument, type(one)))
        missing = set(range(len(self.kinds))) - {argument for _, argument, _ in places}
        if missing:
            raise TypeError(f"{self._name()}: arguments {sorted(missing)} do not reach the statement")
        return tuple(places)

    def _name(self) -> str:
        return getattr(self.build, "__qualname__", repr(self.build))


class PreparedSelect(_Prepared, Generic[Row]):
    """``build(*arguments)`` -> a queryset, compiled once per process and database; calling it runs the
    queryset for the given arguments and returns its rows as a list (models, tuples or values)."""

    def __init__(self, build: Callable[..., QuerySet[Any]], *kinds: type) -> None:
        super().__init__(build, *kinds)

    def __call__(self, *arguments: Any) -> list[Row]:
        self._check_arguments(arguments)
        compiled: _Compiled = self._compiled_for()
        bound_parameters = self._bound(compiled, arguments)
        queryset = compiled.queryset.all()
        using = queryset.db
        if getattr(settings, "SLUICE_PREPARED_CHECK", False):
            self._compare(compiled, arguments, bound_parameters, using)
        bound = _Bound(compiled, bound_parameters, queryset.query, using)
        # Django asks the query for its compiler as it runs it: this one's is the prepared statement.
        queryset.query.get_compiler = lambda *_args, **_kwargs: bound  # type: ignore[method-assign]
        return list(queryset)

    def first(self, *arguments: Any) -> Row | None:
        """The first row, or None: for a builder that asks for one (``[:1]``)."""
        rows = self(*arguments)
        return rows[0] if rows else None

    def _compile(self, using: str | None) -> _Compiled:
        queryset, sql, parameters, compiler = self._statement(using, second=False)
        _, other_sql, other_parameters, _ = self._statement(using, second=True)
        if other_sql != sql:
            raise TypeError(f"{self._name()}: its statement changes with its arguments' values")
        places = self._places(parameters, other_parameters)
        state = {k: v for k, v in compiler.__dict__.items() if k not in ("query", "connection", "using")}
        return _Compiled(queryset, sql, parameters, places, state)

    def _statement(
        self, using: str | None, *, second: bool
    ) -> tuple[QuerySet[Any], str, tuple[Any, ...], SQLCompiler]:
        try:
            queryset = self.build(*(_stand_in(kind, index, second) for index, kind in enumerate(self.kinds)))
            # Pinned to the database it was compiled for: each call runs it there.
            queryset = queryset.using(using or queryset.db)
            if queryset.query.select_for_update:
                raise TypeError("select_for_update is checked against its transaction each time")
            compiler = queryset.query.get_compiler(using=queryset.db)
            sql, parameters = compiler.as_sql()
        except EmptyResultSet:
            raise TypeError(
                f"{self._name()}: Django leaves out a condition, for a stand-in or for good"
            ) from None
        except (TypeError, ValueError) as refused:  # an argument of the wrong kind for its field, say
            raise TypeError(f"{self._name()}: {refused}") from None
        return queryset, sql, tuple(parameters), compiler

    def _compare(
        self, compiled: _Compiled, arguments: Sequence[Any], parameters: tuple[Any, ...], using: str
    ) -> None:
        queryset = self.build(*arguments)
        sql, expected = queryset.query.get_compiler(using=using).as_sql()
        # The same kind of rows (models, tuples, flat values) of the same fields.
        shape, compiled_shape = (
            (given._iterable_class, getattr(given, "_fields", None))
            for given in (queryset, compiled.queryset)
        )
        if (
            sql != compiled.sql
            or list(map(_comparable, expected)) != list(map(_comparable, parameters))
            or shape != compiled_shape
        ):
            raise PreparedMismatch(
                f"{self._name()}: the prepared statement is not the queryset's own\n"
                f"prepared: {compiled.sql} {parameters!r}\ncompiled: {sql} {tuple(expected)!r}"
            )


class PreparedUpdate(_Prepared):
    """``build(*arguments)`` -> (a queryset, the values to set), compiled once per process and database;
    calling it runs ``queryset.update(**values)`` for the given arguments and returns how many rows it
    changed. The arguments follow the same rules as a ``PreparedSelect``'s, in the filter or among the
    values alike. Refused when it is first compiled: an UPDATE Django would make in more than one
    statement or after a SELECT of its own (a model's parent table, a filter across a relation).
    Signals are not sent, as ``update`` sends none."""

    _for_write = True

    def __init__(self, build: Callable[..., tuple[QuerySet[Any], Mapping[str, Any]]], *kinds: type) -> None:
        super().__init__(build, *kinds)

    def __call__(self, *arguments: Any) -> int:
        self._check_arguments(arguments)
        compiled: _CompiledUpdate = self._compiled_for()
        parameters = self._bound(compiled, arguments)
        if getattr(settings, "SLUICE_PREPARED_CHECK", False):
            self._compare(compiled, arguments, parameters)
        # As QuerySet.update: a failure inside an atomic block marks it for rollback.
        with (
            transaction.mark_for_rollback_on_error(using=compiled.using),
            connections[compiled.using].cursor() as cursor,
        ):
            cursor.execute(compiled.sql, parameters)
            return int(cursor.rowcount)

    def _compile(self, using: str | None) -> _CompiledUpdate:
        model, used, sql, parameters = self._statement(self._stand_ins(second=False), using)
        _, _, other_sql, other_parameters = self._statement(self._stand_ins(second=True), using)
        if other_sql != sql:
            raise TypeError(f"{self._name()}: its statement changes with its arguments' values")
        return _CompiledUpdate(model, used, sql, parameters, self._places(parameters, other_parameters))

    def _stand_ins(self, *, second: bool) -> list[Any]:
        return [_stand_in(kind, index, second) for index, kind in enumerate(self.kinds)]

    def _statement(
        self, arguments: Sequence[Any], using: str | None
    ) -> tuple[type[Any], str, str, tuple[Any, ...]]:
        """The model, the database, and the UPDATE's text and parameters as ``QuerySet.update`` makes them."""
        try:
            queryset, values = self.build(*arguments)
            _refuse_unlike_update(queryset)
            used = using or router.db_for_write(queryset.model)
            query = queryset.query.chain(UpdateQuery)
            query.add_update_values(dict(values))
            query.clear_select_clause()
            query.get_initial_alias()
            # More tables (a parent model's, a relation's) and Django's compiler SELECTs the rows' keys
            # first, or updates in several statements: not one statement with its arguments.
            if query.related_updates or query.count_active_tables() != 1:
                raise TypeError("it spans more than one table")
            sql, parameters = query.get_compiler(using=used).as_sql()
        except EmptyResultSet:
            raise TypeError(
                f"{self._name()}: Django leaves out a condition, for a stand-in or for good"
            ) from None
        except (TypeError, ValueError, FieldError, ValidationError) as refused:
            raise TypeError(f"{self._name()}: {refused}") from None
        if not sql:
            raise TypeError(f"{self._name()}: it sets nothing")
        return queryset.model, used, sql, tuple(parameters)

    def _compare(
        self, compiled: _CompiledUpdate, arguments: Sequence[Any], parameters: tuple[Any, ...]
    ) -> None:
        _, _, sql, expected = self._statement(arguments, compiled.using)
        if sql != compiled.sql or list(map(_comparable, expected)) != list(map(_comparable, parameters)):
            raise PreparedMismatch(
                f"{self._name()}: the prepared statement is not the update's own\n"
                f"prepared: {compiled.sql} {parameters!r}\ncompiled: {sql} {expected!r}"
            )


def _refuse_unlike_update(queryset: QuerySet[Any]) -> None:
    """A queryset whose ``update`` would not be the statement compiled here: sliced or combined (Django
    refuses those), with an ``update`` of its own (an append-only log's refuses), or sent to a database
    the builder chose (each call goes where the router sends the model's writes)."""
    if queryset.query.is_sliced or queryset.query.combinator:
        raise TypeError("a sliced or combined queryset cannot be updated")
    if type(queryset).update is not QuerySet.update:
        raise TypeError(f"{type(queryset).__name__} has an update of its own")
    if getattr(queryset, "_db", None) is not None or getattr(queryset, "_hints", None):
        raise TypeError("the router chooses the database, not the builder")
