"""The rollout that changes a flag for every user at once at 100% (the Flags page's "changes at 100%")."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0021_passclaim"),
    ]

    operations = [
        migrations.AddField(
            model_name="publishedflag",
            name="held_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="gitops.rollout",
            ),
        ),
    ]
