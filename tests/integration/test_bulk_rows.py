"""``UnsavedRows`` and ``rows_insert`` with JSON the caller encoded once (real PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gitops.desired.content import Content
from gitops.desired.policy import Policy, Target
from gitops.desired.revision import DesiredObject, DesiredState
from gitops.models import ApplyIntent, Revision, Rollout, UnsavedRows
from gitops.plan import plan
from gitops.record import bulk
from gitops.record.bulk import rows_insert
from gitops.storable import compact_json

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
    with pytest.raises(ValueError, match="must be a Source instance"):
        made(**{**_values(source), "source": Revision(source=source, commit="c" * 40)})


def test_an_intent_carries_its_manifest_encoded_once(make_source):
    """``for_item`` encodes the manifest it makes: the row and the apply take that text."""
    source = make_source()
    content = Content(data={"conf": "a: 1\nb: 2\n"}, labels={"app": "x"})
    obj = DesiredObject(
        namespace="team-a",
        name="app",
        content=content,
        origin="configmaps/app.yaml",
        line=1,
        kind="configmap",
        group="configmaps/app.yaml#0",
        rank=0,
        cluster="local",
    )
    policy = Policy((Target("local", ("team-a",)),), ("team-a",), False, False, "team-a")
    planned = plan(
        DesiredState(policy, (obj,)),
        {("local", "team-a"): []},
        source=source.name,
        commit="c" * 40,
        managed=set(),
    )
    (item,) = planned.items
    intent = ApplyIntent.for_item(
        Rollout(source=source), item, commit="c" * 40, actor="alice", step_index=0, weight=100
    )
    assert intent.manifest_json is not None
    assert json.loads(intent.manifest_json) == intent.manifest
    assert intent.manifest["data"] == {"conf": "a: 1\nb: 2\n"}
    assert [(entry["field"], entry.get("unified")) for entry in intent.diff] == [
        ("data", None),
        ("labels", None),
    ], "an added key's text is derived when shown"


def test_encoded_json_goes_in_as_it_is_and_reads_back_as_the_value(make_source):
    source = make_source()
    made = UnsavedRows(ApplyIntent)
    encoded = made(**_values(source, name="encoded"))
    # Not the attribute's value: the row must take the text, as it is.
    encoded.manifest_json = json.dumps({**MANIFEST, "data": {"from": "the text"}}, separators=(",", ":"))
    plain = made(**_values(source, name="plain"))  # manifest_json None: its value is encoded as usual
    empty = made(**_values(source, name="delete", action="delete", manifest=None, after=None))
    rows_insert([encoded, plain, empty], encoded=lambda intent: {"manifest": intent.manifest_json})

    stored = {intent.name: intent for intent in ApplyIntent.objects.filter(source=source)}
    assert [stored[name].pk for name in ("encoded", "plain", "delete")] == [encoded.pk, plain.pk, empty.pk]
    assert stored["encoded"].manifest == {**MANIFEST, "data": {"from": "the text"}}
    assert stored["plain"].manifest == MANIFEST
    assert stored["delete"].manifest is None
    assert _fields(stored["plain"]) == {**_fields(plain), "id": plain.pk}


def test_rows_read_back_the_same_through_orjson_and_through_json(make_source, monkeypatch):
    """``_document`` writes a batch through orjson (UTF-8; datetimes through ``isoformat``), and
    through json a batch holding what orjson refuses (here an integer past 64 bits): either way each
    value reads back as given, U+0000 as U+FFFD (jsonb takes none), a datetime to the microsecond."""
    through_json = []
    original = bulk._json_document
    monkeypatch.setattr(bulk, "_json_document", lambda *args: through_json.append(1) or original(*args))
    source = make_source()
    made = UnsavedRows(ApplyIntent)
    odd = {"data": {"é": "😀 \u2028 \x00 \\u0000 \ud7ff", "quote": 'say "hi"\n'}}
    when = timezone.now().replace(microsecond=123456)
    big = [{"op": "add", "field": "data", "key": "n", "old": None, "new": 2**70}]
    for name, diff in (("fast", _values(source)["diff"]), ("big", big)):
        intent = made(**_values(source, name=name, after=odd, diff=diff, created_at=when))
        intent.manifest_json = compact_json(MANIFEST)
        rows_insert([intent], encoded=lambda row: {"manifest": row.manifest_json})
        assert len(through_json) == (name == "big")
        stored = ApplyIntent.objects.get(source=source, name=name)
        assert stored.after == {"data": {"é": "😀 \u2028 \ufffd \\u0000 \ud7ff", "quote": 'say "hi"\n'}}
        assert stored.diff == diff and stored.manifest == MANIFEST
        assert stored.created_at == when


def test_encoded_json_for_a_column_the_model_lacks_is_refused_and_nothing_is_written(make_source):
    source = make_source()
    intent = UnsavedRows(ApplyIntent)(**_values(source))
    with pytest.raises(ValueError, match="no column 'colour'"):
        rows_insert([intent], encoded=lambda _: {"colour": '"red"'})
    assert not ApplyIntent.objects.filter(source=source).exists()


def test_the_document_travels_apart_from_the_statement_and_errors_read_as_django_s(make_source):
    """Server-side binding: the query log keeps the statement, not its megabytes of rows, and a
    refusal is Django's ``IntegrityError`` as any query's would be."""
    source = make_source()
    intent = UnsavedRows(ApplyIntent)(**_values(source, name="logged"))
    with CaptureQueriesContext(connection) as queries:
        rows_insert([intent])
    (logged,) = [query["sql"] for query in queries.captured_queries]
    assert "jsonb_to_recordset" in logged and "logged" not in logged
    assert ApplyIntent.objects.get(pk=intent.pk).name == "logged"

    orphan = UnsavedRows(ApplyIntent)(**{**_values(source), "source": None, "source_id": -1})
    with pytest.raises(IntegrityError):
        rows_insert([orphan])
