"""A rollout claims the flag keys it publishes as it starts (``Rollout.flag_claims``): another source's
revision that would publish one into the same place is rejected while the rollout is under way, before
its first write reaches the flag catalog. A database default: a worker of the release before inserts
rollouts without it (and without claims, as before)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0034_rollout_path"),
    ]

    operations = [
        migrations.AddField(
            model_name="rollout",
            name="flag_claims",
            field=models.JSONField(blank=True, db_default=[], default=list),
        ),
    ]
