"""Inserting thousands of new rows in one query, as one JSON document PostgreSQL unpacks.

Django's ``bulk_create`` compiles a placeholder per field per row, and psycopg
then adapts and quotes each value on the client: for 10,000 intents with their
content that was a large part of a cold apply's CPU. Here the rows go as one
JSON array, encoded once by the C encoder, and ``jsonb_to_recordset`` turns it
back into typed columns inside PostgreSQL; JSON fields travel as nested JSON,
never as strings encoded twice.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

import orjson
import psycopg
from django.db import IntegrityError, connection, models, transaction
from psycopg.errors import UniqueViolation

from gitops.storable import jsonb_text

Row = TypeVar("Row", bound=models.Model)
# For an object, JSON text already encoded for some of its columns (column -> text; None: not
# encoded, the attribute's value goes in as usual).
Encoded = Callable[[Any], Mapping[str, str | None]]


def rows_insert(
    objects: Sequence[Row], *, batch_size: int = 1000, encoded: Encoded | None = None
) -> list[Row]:
    """Inserts unsaved instances of one model, in order, ``batch_size`` rows a query, and sets their
    primary keys. Batches bound the memory one JSON document takes. All rows or none: one batch is
    one statement, and more run in a transaction.

    Fields are taken as ``save`` would (defaults already set, ``pre_save`` applied); the
    primary key comes from its sequence. Returns ``objects``, as ``bulk_create`` does.

    ``encoded`` gives, for an object, the JSON text of JSON columns the caller has encoded already
    (the text of the attribute's value): it goes into the document as it is, not encoded again.
    """
    if len(objects) <= batch_size:  # one statement is atomic already: no BEGIN and COMMIT to wait for
        if objects:
            _batch_insert(objects, encoded)
        return list(objects)
    with transaction.atomic():
        for start in range(0, len(objects), batch_size):
            _batch_insert(objects[start : start + batch_size], encoded)
    return list(objects)


def row_create_once(manager: models.Manager[Row], **fields: Any) -> Row | None:
    """Creates a row, or returns None when a unique constraint refuses it (the row exists). Any other
    refusal (a foreign key, a check) is raised, not mistaken for the row being there.

    Outside a transaction (a task, a request) the INSERT commits on its own, so a refusal harms
    nothing and ``get_or_create``'s BEGIN and COMMIT round trips are saved; inside one, a savepoint
    keeps a refusal from breaking the caller's transaction.
    """
    try:
        if not transaction.get_connection(manager.db).in_atomic_block:
            return manager.create(**fields)
        with transaction.atomic(using=manager.db):
            return manager.create(**fields)
    except IntegrityError as exc:
        if isinstance(exc.__cause__, UniqueViolation):
            return None
        raise


def _batch_insert(objects: Sequence[models.Model], encoded: Encoded | None) -> None:
    model = type(objects[0])
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    columns = [str(field.column) for field in fields]
    plain = [_reads_attribute(field) for field in fields]
    rows = [
        {
            column: obj.__dict__[field.attname] if as_set else field.pre_save(obj, add=True)
            for column, field, as_set in zip(columns, fields, plain, strict=True)
        }
        for obj in objects
    ]
    # Live content (an intent's ``before``) may hold U+0000, which jsonb refuses.
    document = jsonb_text(
        _document(rows, [encoded(obj) for obj in objects] if encoded else None, set(columns))
    )
    quote = connection.ops.quote_name
    names = ", ".join(quote(column) for column in columns)
    typed = ", ".join(
        f"{quote(column)} {field.db_type(connection)}" for column, field in zip(columns, fields, strict=True)
    )
    # Only the model's own table, column names and types are formatted in; the rows are a parameter.
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} ({names}) "  # noqa: S608
        f"SELECT {names} FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({typed})) "
        "WITH ORDINALITY AS r ORDER BY r.ordinality "
        f"RETURNING {quote(str(model._meta.pk.column))}"
    )
    with _server_bound_cursor() as cursor:
        cursor.execute(sql, [document])
        # The sequence numbers rows in the order they are inserted, which is the objects' order.
        keys = sorted(key for (key,) in cursor.fetchall())
    for obj, key in zip(objects, keys, strict=True):
        obj.pk = key
        obj._state.adding = False
        obj._state.db = connection.alias


@contextlib.contextmanager
def _server_bound_cursor() -> Iterator[Any]:
    """A cursor of the default connection that sends parameters apart from the statement (libpq's
    server-side binding), wrapped as ``connection.cursor()`` wraps its own: Django's errors, and the
    query log when it is kept. Django's cursors bind on the client: psycopg quotes a parameter into
    the statement's text and PostgreSQL parses it back out, about 6 ns a byte on each side, and a
    batch's document is megabytes. ``connection.queries`` keeps the statement, not the document
    (Django's DEBUG-level SQL logger is still handed the parameters, as for any query)."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw: Any = psycopg.Cursor(connection.connection)  # Django's wrappers take any DB-API cursor
    connection.validate_thread_sharing()
    wrapped = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    with wrapped as cursor:
        yield cursor


def _document(
    rows: list[dict[str, Any]], encoded: list[Mapping[str, str | None]] | None, columns: set[str]
) -> str:
    """The rows as one JSON array; a row's already encoded columns go in as their text.

    Through orjson, its ``Fragment`` splicing the encoded texts: a tenth of json's CPU for an intent's
    row (a cold apply of 10,000 writes 10,000). Its text is UTF-8 where json's escaped, which
    PostgreSQL reads the same; dates and datetimes go to ``_json_value`` as before (orjson's own would
    round an offset of seconds to minutes). What orjson refuses (an integer outside 64 bits, a key that
    is not a string, a lone surrogate, a time) goes through json as before, which writes it or raises
    as it did. Where they still differ, for values no intent holds, see ``gitops.storable``: NaN, which
    jsonb cannot hold and json's text made PostgreSQL refuse, would be stored as null.
    """
    fast = rows
    if encoded is not None:
        fast = [
            row | {column: orjson.Fragment(text) for column, text in given.items()}
            for row, given in zip(rows, _spliced(encoded, columns), strict=True)
        ]
    try:
        return orjson.dumps(fast, default=_json_value, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return _json_document(rows, encoded, columns)


def _json_document(
    rows: list[dict[str, Any]], encoded: list[Mapping[str, str | None]] | None, columns: set[str]
) -> str:
    """``_document`` by json, for what orjson refuses."""
    if encoded is None:
        return json.dumps(rows, default=_json_value)
    texts = []
    for row, spliced in zip(rows, _spliced(encoded, columns), strict=True):
        if not spliced:
            texts.append(json.dumps(row, default=_json_value))
            continue
        rest = json.dumps({c: v for c, v in row.items() if c not in spliced}, default=_json_value)
        # Column names are the model's own (checked above); the texts are JSON the caller encoded.
        added = ", ".join(f"{json.dumps(column)}: {text}" for column, text in spliced.items())
        texts.append(f"{rest[:-1]}, {added}}}" if rest != "{}" else f"{{{added}}}")
    return f"[{', '.join(texts)}]"


def _spliced(encoded: list[Mapping[str, str | None]], columns: set[str]) -> list[dict[str, str]]:
    """Each row's already encoded columns (those given a text), refused unless the model has them."""
    spliced = [{column: text for column, text in given.items() if text is not None} for given in encoded]
    for texts in spliced:
        if not texts.keys() <= columns:
            raise ValueError(f"no column {sorted(texts.keys() - columns)[0]!r} to take encoded JSON")
    return spliced


def _reads_attribute(field: models.Field[Any, Any]) -> bool:
    """Whether ``field.pre_save`` only reads the instance's attribute: then the attribute is read
    straight from the instance (thousands of rows, a method call per field per row saved). A date
    stamped on save (``auto_now``), or any field class with a ``pre_save`` of its own, is asked."""
    if type(field).pre_save is models.Field.pre_save:
        return True
    return (
        isinstance(field, models.DateField)
        and type(field).pre_save in (models.DateField.pre_save, models.DateTimeField.pre_save)
        and not (field.auto_now or field.auto_now_add)
    )


def _json_value(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} cannot go into a JSON row")
