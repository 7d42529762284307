"""The inventory's version (migration 0014): the database bumps it whenever a source's set of managed
keys may change, and the worker's copy of the keys is trusted only while it holds."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from gitops import caches
from gitops.models import InventoryVersion, ManagedObject
from gitops.record.inventory import managed_keys

pytestmark = pytest.mark.django_db(transaction=True)

UPSERT = """
INSERT INTO gitops_managedobject (source_id, cluster, namespace, name, kind, commit, content_hash, updated_at)
VALUES (%s, 'default', 'team-a', 'one', 'ConfigMap', %s, 'h3', now())
ON CONFLICT (cluster, kind, namespace, name) DO UPDATE SET commit = EXCLUDED.commit,
    content_hash = EXCLUDED.content_hash, updated_at = EXCLUDED.updated_at
"""


def version(source) -> int | None:
    return InventoryVersion.objects.filter(source_id=source.pk).values_list("version", flat=True).first()


def managed(source, name: str, *, namespace: str = "team-a") -> ManagedObject:
    return ManagedObject.objects.create(
        source=source, cluster="default", namespace=namespace, name=name, commit="a" * 40, content_hash="h1"
    )


def test_new_and_deleted_objects_bump_the_version_and_a_new_hash_does_not(make_source):
    source = make_source()
    assert version(source) is None  # nothing applied yet
    first = managed(source, "one")
    after_insert = version(source)
    assert after_insert is not None
    managed(source, "two")
    after_second = version(source)
    assert after_second > after_insert
    # What every applied update does: a new commit and content hash for the same object.
    ManagedObject.objects.filter(pk=first.pk).update(
        commit="b" * 40, content_hash="h2", updated_at=timezone.now()
    )
    assert version(source) == after_second
    # record_applied's upsert, for an object already in the inventory: no new key.
    with connection.cursor() as cursor:
        cursor.execute(UPSERT, [source.pk, "c" * 40])
    assert version(source) == after_second
    assert ManagedObject.objects.get(pk=first.pk).commit == "c" * 40
    ManagedObject.objects.filter(pk=first.pk).delete()
    after_delete = version(source)
    assert after_delete > after_second
    ManagedObject.objects.filter(name="nothing-matches").delete()  # a statement that deletes nothing
    assert version(source) == after_delete


def test_an_object_moved_to_another_source_bumps_both(make_source):
    one, other = make_source(name="one"), make_source(name="other")
    managed(one, "shared")
    managed(other, "its-own")
    before = (version(one), version(other))
    # record_applied's upsert when another source now applies the object: its row moves.
    with connection.cursor() as cursor:
        cursor.execute(
            UPSERT.replace("'one'", "'shared'").replace(
                "EXCLUDED.commit,", "EXCLUDED.commit, source_id = EXCLUDED.source_id,"
            ),
            [other.pk, "d" * 40],
        )
    assert ManagedObject.objects.get(name="shared").source_id == other.pk
    assert version(one) > before[0] and version(other) > before[1]


def test_the_worker_keeps_the_keys_while_the_version_holds_and_rereads_them_after_any_write(
    make_source, test_database_url
):
    source = make_source()
    managed(source, "one")
    caches.drop(source.pk)
    first = managed_keys(source)
    assert first == {("default", "team-a", "one")}
    assert managed_keys(source) is first  # one number read, the same set handed back

    # Another writer (a second worker, a removal, a script) on its own connection, committed.
    with psycopg.connect(test_database_url, autocommit=True) as other:
        other.execute(
            "INSERT INTO gitops_managedobject (source_id, cluster, namespace, name, kind, commit,"
            " content_hash, updated_at) VALUES (%s, 'default', 'team-b', 'two', 'ConfigMap', %s, 'h', now())",
            [source.pk, "c" * 40],
        )
    assert managed_keys(source) == {("default", "team-a", "one"), ("default", "team-b", "two")}
    with psycopg.connect(test_database_url, autocommit=True) as other:
        other.execute("DELETE FROM gitops_managedobject WHERE source_id = %s AND name = 'one'", [source.pk])
    assert managed_keys(source) == {("default", "team-b", "two")}


def test_a_version_is_never_handed_out_twice_whatever_happens_to_the_row(make_source):
    """A worker keeps (version, keys). Were versions counted per source, a deleted row (or a rolled-back
    bump) would let a later inventory reach the kept number with other keys."""
    source = make_source()
    managed(source, "one")
    caches.drop(source.pk)
    assert managed_keys(source) == {("default", "team-a", "one")}
    InventoryVersion.objects.filter(source_id=source.pk).delete()  # as for a table emptied by hand
    assert managed_keys(source) == {("default", "team-a", "one")}  # no version: read, not kept
    managed(source, "two")  # a new row, with a number never seen
    assert managed_keys(source) == {("default", "team-a", "one"), ("default", "team-a", "two")}


def test_a_truncated_inventory_is_read_again(make_source):
    source = make_source()
    managed(source, "one")
    caches.drop(source.pk)
    assert managed_keys(source) == {("default", "team-a", "one")}
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE gitops_managedobject")  # no DELETE trigger sees it
    assert managed_keys(source) == frozenset()


def test_a_sources_deletion_leaves_another_sources_entry_of_the_same_name_alone(make_source):
    """A source's intent deleted an object (a crashed removal's, finished late) whose name another source
    has taken over since: only the deleting source's entry goes. Before, the other source's went too, and
    its plans then took its own object for someone else's."""
    from gitops.models import ApplyIntent
    from gitops.record.inventory import inventory_update

    leaving, taking_over = make_source(), make_source()
    managed(leaving, "gone")
    managed(taking_over, "one")  # the name the deletion below is about
    deletion = ApplyIntent(
        source=leaving, cluster="default", namespace="team-a", name="one", commit="c", action="delete"
    )

    inventory_update([deletion])

    assert list(ManagedObject.objects.filter(name="one").values_list("source_id", flat=True)) == [
        taking_over.pk
    ]
    assert ManagedObject.objects.filter(source=leaving, name="gone").exists()
