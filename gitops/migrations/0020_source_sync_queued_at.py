"""When a source's queued-sync mark was set (``schedule.sync_queued_claim``): an old mark is a lost task's.

Marks already set when this runs get the migration's time, so that one whose task was lost before
the upgrade is taken over ten minutes later rather than never (a NULL time never counts as old).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0019_rollout_rollback_phase_planned_steps"),
    ]

    operations = [
        migrations.AddField(
            model_name="source",
            name="sync_queued_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunSQL(
            "UPDATE gitops_source SET sync_queued_at = now() WHERE sync_queued AND sync_queued_at IS NULL",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
