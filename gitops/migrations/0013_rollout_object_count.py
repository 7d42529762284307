"""How many objects each rollout's change-log entries name, kept by the database itself.

Statement triggers keep the count, so every writer of the log (a worker, one of the previous
release during an upgrade, a script) keeps it true; they see a whole INSERT at once: one upsert
per statement and rollout, not one per row. An object is new to its rollout when the log has no
entry of it older than the statement's first: under one writer per source (the reconcile lock), an
older entry of the same rollout has a smaller id. An archival (the one sanctioned DELETE) counts
the rollouts it touched again.

The change log may hold millions of entries, so nothing here holds its writers back for longer
than a statement: the table and triggers come first, in one short transaction; then every existing
rollout is counted in a transaction of its own, under a lock on its count alone. Every step may be
run again: a migrate interrupted while counting is finished by running migrate again.
"""

import django.db.models.deletion
from django.db import migrations, models, transaction

# Django's own table (as sqlmigrate prints it), made safe to create twice.
SCHEMA = """
CREATE TABLE IF NOT EXISTS "gitops_rolloutobjectcount" (
    "rollout_id" bigint NOT NULL PRIMARY KEY
        CONSTRAINT "gitops_rolloutobject_rollout_id_e9d51f1f_fk_gitops_ro"
        REFERENCES "gitops_rollout" ("id") DEFERRABLE INITIALLY DEFERRED,
    "total" integer NOT NULL CHECK ("total" >= 0)
);

CREATE OR REPLACE FUNCTION gitops_rollout_objects_logged() RETURNS trigger AS $$
BEGIN
    INSERT INTO gitops_rolloutobjectcount AS counted (rollout_id, total)
    SELECT entry.rollout_id, count(*)
    FROM (
        SELECT rollout_id, cluster, namespace, kind, name, min(id) AS first_id
        FROM logged WHERE rollout_id IS NOT NULL
        GROUP BY rollout_id, cluster, namespace, kind, name
    ) AS entry
    WHERE NOT EXISTS (
        SELECT 1 FROM gitops_change earlier
        WHERE earlier.rollout_id = entry.rollout_id AND earlier.cluster = entry.cluster
            AND earlier.namespace = entry.namespace AND earlier.kind = entry.kind
            AND earlier.name = entry.name AND earlier.id < entry.first_id
    )
    GROUP BY entry.rollout_id
    ON CONFLICT (rollout_id) DO UPDATE SET total = counted.total + EXCLUDED.total;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER gitops_rollout_objects_logged
    AFTER INSERT ON gitops_change REFERENCING NEW TABLE AS logged
    FOR EACH STATEMENT EXECUTE FUNCTION gitops_rollout_objects_logged();

CREATE OR REPLACE FUNCTION gitops_rollout_objects_archived() RETURNS trigger AS $$
BEGIN
    UPDATE gitops_rolloutobjectcount counted SET total = (
        SELECT count(*) FROM (
            SELECT DISTINCT cluster, namespace, kind, name FROM gitops_change
            WHERE rollout_id = counted.rollout_id
        ) AS remaining
    )
    WHERE counted.rollout_id IN (SELECT rollout_id FROM archived);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE TRIGGER gitops_rollout_objects_archived
    AFTER DELETE ON gitops_change REFERENCING OLD TABLE AS archived
    FOR EACH STATEMENT EXECUTE FUNCTION gitops_rollout_objects_archived();
"""

SCHEMA_UNDO = """
DROP TRIGGER IF EXISTS gitops_rollout_objects_archived ON gitops_change;
DROP FUNCTION IF EXISTS gitops_rollout_objects_archived();
DROP TRIGGER IF EXISTS gitops_rollout_objects_logged ON gitops_change;
DROP FUNCTION IF EXISTS gitops_rollout_objects_logged();
DROP TABLE IF EXISTS "gitops_rolloutobjectcount";
"""

# First the rollout's count row, locked (a trigger adding to it meanwhile waits); then, in a
# statement of its own and so with a snapshot taken after the lock, the count. An entry committed
# before that snapshot is counted here; one committed after it was still waiting to add itself.
COUNT_LOCK = """
INSERT INTO gitops_rolloutobjectcount AS counted (rollout_id, total) VALUES (%s, 0)
ON CONFLICT (rollout_id) DO UPDATE SET total = counted.total
"""
COUNT = """
UPDATE gitops_rolloutobjectcount SET total = (
    SELECT count(*) FROM (
        SELECT DISTINCT cluster, namespace, kind, name FROM gitops_change WHERE rollout_id = %s
    ) AS objects
)
WHERE rollout_id = %s
"""


def rollouts_count(connection) -> None:
    """Counts every rollout's objects again, one short transaction each (gitops_change_latest's
    index order: a rollout's entries are one range of it)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM gitops_rollout ORDER BY id")
        rollout_ids = [row[0] for row in cursor.fetchall()]
    for rollout_id in rollout_ids:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(COUNT_LOCK, [rollout_id])
            cursor.execute(COUNT, [rollout_id, rollout_id])


def schema_create(apps, schema_editor) -> None:
    schema_editor.execute(SCHEMA)


def schema_drop(apps, schema_editor) -> None:
    schema_editor.execute(SCHEMA_UNDO)


def backfill(apps, schema_editor) -> None:
    rollouts_count(schema_editor.connection)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("gitops", "0012_pass_and_history_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="RolloutObjectCount",
                    fields=[
                        (
                            "rollout",
                            models.OneToOneField(
                                on_delete=django.db.models.deletion.CASCADE,
                                primary_key=True,
                                related_name="object_count",
                                serialize=False,
                                to="gitops.rollout",
                            ),
                        ),
                        ("total", models.PositiveIntegerField(default=0)),
                    ],
                ),
            ],
        ),
        migrations.RunPython(schema_create, schema_drop, atomic=True),
        migrations.RunPython(backfill, migrations.RunPython.noop, atomic=False),
    ]
