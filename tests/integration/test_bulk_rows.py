"""``UnsavedRows`` and ``rows_insert`` with JSON the caller encoded once (real PostgreSQL)."""

from __future__ import annotations

import json

import pytest

from gitops.models import ApplyIntent, UnsavedRows
from gitops.record.bulk import rows_insert

pytestmark = pytest.mark.django_db(transaction=True)

MANIFEST = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "app", "namespace": "team-a", "labels": {"app": "x"}},
    "data": {"conf": "a: 1\nb: \u00e9\n", "quote": 'say "hi"'},
}


def _values(source, **fields):
    return {
        "source": source,
        "cluster": "local",
        "namespace": "team-a",
        "name": "app",
        "action": "create",
        "commit": "c" * 40,
        "manifest": MANIFEST,
        "after": {"data": MANIFEST["data"]},
        "diff": [{"op": "add", "field": "data", "key": "conf", "old": None, "new": "a: 1\n"}],
        "actor": "alice",
        **fields,
    }


def _fields(intent: ApplyIntent) -> dict[str, object]:
    return {
        field.attname: getattr(intent, field.attname)
        for field in ApplyIntent._meta.concrete_fields
        if field.attname != "created_at"
    }


def test_an_unsaved_row_is_what_the_model_s_constructor_makes(make_source):
    source = make_source()
    made = UnsavedRows(ApplyIntent)
    fast, slow = made(**_values(source)), ApplyIntent(**_values(source))
    assert _fields(fast) == _fields(slow)
    assert fast.source is source and fast.source_id == source.pk
    assert fast._state.adding and fast.pk is None
    assert fast.status == ApplyIntent.Status.PENDING and fast.created_at is not None
    # A callable default is called for each instance: two rows never share one list.
    bare = {key: value for key, value in _values(source).items() if key != "diff"}
    first, second = made(**bare), made(**bare)
    assert first.diff == [] and first.diff is not second.diff
    with pytest.raises(TypeError, match="no field 'colour'"):
        made(**_values(source), colour="red")


def test_encoded_json_goes_in_as_it_is_and_reads_back_as_the_value(make_source):
    source = make_source()
    made = UnsavedRows(ApplyIntent)
    encoded = made(**_values(source, name="encoded"))
    encoded.manifest_json = json.dumps(MANIFEST, separators=(",", ":"))
    plain = made(**_values(source, name="plain"))  # manifest_json None: its value is encoded as usual
    empty = made(**_values(source, name="delete", action="delete", manifest=None, after=None))
    rows_insert([encoded, plain, empty], encoded=lambda intent: {"manifest": intent.manifest_json})

    stored = {intent.name: intent for intent in ApplyIntent.objects.filter(source=source)}
    assert [stored[name].pk for name in ("encoded", "plain", "delete")] == [encoded.pk, plain.pk, empty.pk]
    assert stored["encoded"].manifest == MANIFEST == stored["plain"].manifest
    assert stored["delete"].manifest is None
    assert _fields(stored["encoded"]) == {**_fields(encoded), "id": encoded.pk}


def test_encoded_json_for_a_column_the_model_lacks_is_refused_and_nothing_is_written(make_source):
    source = make_source()
    intent = UnsavedRows(ApplyIntent)(**_values(source))
    with pytest.raises(ValueError, match="no column 'colour'"):
        rows_insert([intent], encoded=lambda _: {"colour": '"red"'})
    assert not ApplyIntent.objects.filter(source=source).exists()
