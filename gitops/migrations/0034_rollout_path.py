"""A rollout records the source directory its content was read from: an administrator who moves a source
to another ``--path`` at the same commit changes what the clusters should hold, and that goes out as a new
rollout, through its steps and gates, not at once as drift. Existing rollouts take their source's path.
NULL (a worker of the release before, during an upgrade) is taken as the source's path."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0033_cluster_identity"),
    ]

    operations = [
        migrations.AddField(
            model_name="rollout",
            name="path",
            field=models.CharField(blank=True, default=None, max_length=1000, null=True),
        ),
        migrations.RunSQL(
            "UPDATE gitops_rollout SET path = gitops_source.path FROM gitops_source "
            "WHERE gitops_rollout.source_id = gitops_source.id",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
