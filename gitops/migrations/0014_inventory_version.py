"""A version number per source's inventory, kept by the database itself.

A worker reads a source's inventory (its managed objects' keys) on every pass: 10,000 rows for a
10,000-object source, to find that nothing changed. Statement triggers on ``gitops_managedobject``
bump the source's version whenever its set of keys may have changed: an object inserted or
deleted, or one whose source or name an upsert rewrote. An upsert that only records a new commit or
content hash (every update Sluice applies) leaves the keys, and so the version, alone. Every writer
(a worker, a removal, an older release during an upgrade, a script, a cascade) goes through them.

The table holds no foreign key: a deleted source's last row is harmless, and a cascade that deletes
a source's inventory must not fail on it.
"""

from django.db import migrations, models

BUMP = """
    INSERT INTO gitops_inventoryversion AS known (source_id, version)
    SELECT DISTINCT changed.source_id, 1 FROM ({changed}) AS changed
    ON CONFLICT (source_id) DO UPDATE SET version = known.version + 1;
    RETURN NULL;
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
    statements = []
    for event, (referencing, changed) in TRIGGERS.items():
        name = f"gitops_inventory_{event.lower()}"
        statements.append(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$\nBEGIN"
            f"{BUMP.format(changed=changed)}END;\n$$ LANGUAGE plpgsql;\n"
            f"CREATE OR REPLACE TRIGGER {name} AFTER {event} ON gitops_managedobject\n"
            f"    {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {name}();\n"
        )
    # Sources that already have an inventory start at version 1, as if it had just been written.
    statements.append(
        "INSERT INTO gitops_inventoryversion (source_id, version) "
        "SELECT DISTINCT source_id, 1 FROM gitops_managedobject ON CONFLICT (source_id) DO NOTHING;"
    )
    return "\n".join(statements)


def _schema_undo() -> str:
    return "\n".join(
        f"DROP TRIGGER IF EXISTS gitops_inventory_{event.lower()} ON gitops_managedobject;\n"
        f"DROP FUNCTION IF EXISTS gitops_inventory_{event.lower()}();"
        for event in TRIGGERS
    )


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
