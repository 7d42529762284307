"""A published flag's reach: a change the canary does not split reaches everyone, a moving flag nobody until 100."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0027_deleted_sources_published_flags"),
    ]

    operations = [
        migrations.AddField(
            model_name="publishedflag",
            name="reach",
            field=models.CharField(
                choices=[("split", "split"), ("at_once", "at_once"), ("at_full", "at_full")],
                default="split",
                max_length=8,
            ),
        ),
    ]
