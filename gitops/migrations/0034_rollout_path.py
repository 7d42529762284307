"""A rollout records the source directory its content was read from: an administrator who moves a source
to another ``--path`` at the same commit changes what the clusters should hold, and that goes out as a new
rollout, through its steps and gates, not at once as drift. Existing rollouts take their source's path,
filled in batches of short transactions (the column is added first, in one of its own, so that workers
of the release before are not held behind the whole table's backfill). NULL (a row such a worker inserts
during the upgrade) is taken as the source's path."""

from django.db import migrations, models, transaction

BATCH = 1000
FILL = """
UPDATE gitops_rollout SET path = gitops_source.path FROM gitops_source
WHERE gitops_rollout.source_id = gitops_source.id AND gitops_rollout.id = ANY(%s)
  AND gitops_rollout.path IS NULL
"""


def backfill(apps, schema_editor) -> None:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM gitops_rollout WHERE path IS NULL ORDER BY id")
        ids = [row[0] for row in cursor.fetchall()]
    for start in range(0, len(ids), BATCH):
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(FILL, [ids[start : start + BATCH]])


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("gitops", "0033_cluster_identity"),
    ]

    operations = [
        # IF NOT EXISTS: not atomic, a migrate stopped in the backfill left the column, and runs again.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="rollout",
                    name="path",
                    field=models.CharField(blank=True, default=None, max_length=1000, null=True),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE gitops_rollout ADD COLUMN IF NOT EXISTS path varchar(1000) NULL",
                    "ALTER TABLE gitops_rollout DROP COLUMN IF EXISTS path",
                ),
            ],
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, atomic=False),
    ]
