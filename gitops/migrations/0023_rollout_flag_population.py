"""One population of users per rollout for its flag canaries (``Rollout.flag_population``). Rollouts
already there get "" (the database default): each of their flags keeps splitting its own users."""

from django.db import migrations, models

import gitops.models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0022_publishedflag_held_by"),
    ]

    operations = [
        migrations.AddField(
            model_name="rollout",
            name="flag_population",
            field=models.CharField(
                blank=True, db_default="", default=gitops.models.new_flag_population, max_length=32
            ),
        ),
    ]
