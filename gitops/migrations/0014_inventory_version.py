"""A version number per source's inventory, kept by the database itself.

A worker reads a source's inventory (its managed objects' keys) on every pass: 10,000 rows for a
10,000-object source, to find that nothing changed. Statement triggers on ``gitops_managedobject``
bump the source's version whenever its set of keys may have changed: an object inserted or
deleted, or one whose source or name an upsert rewrote. An upsert that only records a new commit or
content hash (every update Sluice applies) leaves the keys, and so the version, alone. Every writer
(a worker, a removal, an older release during an upgrade, a script, a cascade) goes through them.

Versions come from one sequence, never from a counter per source: a number is never handed out
twice, so a worker's kept set can never match a later inventory by accident, whatever happened in
between (a version row deleted, a bump rolled back, the table emptied, this migration undone and
applied again: the sequence then starts from the clock). A TRUNCATE of the inventory, which no
DELETE trigger sees, bumps every source.

The table holds no foreign key: a deleted source's last row is harmless, and a cascade that deletes
a source's inventory must not fail on it.
"""

from django.db import migrations, models

# In the order of the sources' ids, so two statements that bump the same sources never deadlock.
BUMP = """
    INSERT INTO gitops_inventoryversion AS known (source_id, version)
    SELECT changed.source_id, nextval('gitops_inventory_version_seq')
    FROM (SELECT DISTINCT source_id FROM ({changed}) AS moved ORDER BY source_id) AS changed
    ON CONFLICT (source_id) DO UPDATE SET version = EXCLUDED.version;
    RETURN NULL;
"""

SEQUENCE = """
CREATE SEQUENCE IF NOT EXISTS gitops_inventory_version_seq;
-- Applied again after being undone, it must not hand out a number a running worker saw.
SELECT setval('gitops_inventory_version_seq', GREATEST(
    (SELECT last_value FROM gitops_inventory_version_seq),
    (extract(epoch FROM clock_timestamp()) * 1000000)::bigint));

CREATE OR REPLACE FUNCTION gitops_inventory_truncate() RETURNS trigger AS $$
BEGIN
    UPDATE gitops_inventoryversion SET version = nextval('gitops_inventory_version_seq');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER gitops_inventory_truncate AFTER TRUNCATE ON gitops_managedobject
    FOR EACH STATEMENT EXECUTE FUNCTION gitops_inventory_truncate();
"""

# Sources that already have an inventory start with a version, as if it had just been written.
BACKFILL = """
INSERT INTO gitops_inventoryversion (source_id, version)
SELECT source_id, nextval('gitops_inventory_version_seq')
FROM (SELECT DISTINCT source_id FROM gitops_managedobject) AS inventoried
ON CONFLICT (source_id) DO NOTHING;
"""

MOVED = """
    SELECT o.source_id FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.source_id, o.cluster, o.namespace, o.name, o.kind)
        IS DISTINCT FROM (n.source_id, n.cluster, n.namespace, n.name, n.kind)
    UNION ALL
    SELECT n.source_id FROM old_rows o JOIN new_rows n ON n.id = o.id
    WHERE (o.source_id, o.cluster, o.namespace, o.name, o.kind)
        IS DISTINCT FROM (n.source_id, n.cluster, n.namespace, n.name, n.kind)
"""

# PostgreSQL allows a transition table on a trigger of one event only: one function per event.
TRIGGERS = {
    "INSERT": ("REFERENCING NEW TABLE AS new_rows", "SELECT source_id FROM new_rows"),
    "DELETE": ("REFERENCING OLD TABLE AS old_rows", "SELECT source_id FROM old_rows"),
    "UPDATE": ("REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows", MOVED),
}


def _schema() -> str:
    statements = [SEQUENCE]
    for event, (referencing, changed) in TRIGGERS.items():
        name = f"gitops_inventory_{event.lower()}"
        statements.append(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$\nBEGIN"
            f"{BUMP.format(changed=changed)}END;\n$$ LANGUAGE plpgsql;\n"
            f"CREATE OR REPLACE TRIGGER {name} AFTER {event} ON gitops_managedobject\n"
            f"    {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {name}();\n"
        )
    statements.append(BACKFILL)
    return "\n".join(statements)


def _schema_undo() -> str:
    names = [f"gitops_inventory_{event.lower()}" for event in [*TRIGGERS, "TRUNCATE"]]
    drops = [
        f"DROP TRIGGER IF EXISTS {name} ON gitops_managedobject;\nDROP FUNCTION IF EXISTS {name}();"
        for name in names
    ]
    return "\n".join([*drops, "DROP SEQUENCE IF EXISTS gitops_inventory_version_seq;"])


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0013_rollout_object_count"),
    ]

    operations = [
        migrations.CreateModel(
            name="InventoryVersion",
            fields=[
                ("source_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("version", models.BigIntegerField(default=0)),
            ],
        ),
        migrations.RunSQL(_schema(), _schema_undo()),
    ]
