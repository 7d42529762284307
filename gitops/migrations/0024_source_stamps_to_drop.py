"""The live cache's stamps a worker's writes outdated and could not drop (Redis did not answer), held
with their source (``Source.stamps_to_drop``) until a later pass drops them; meanwhile the source's
plans read the cluster. One column with a database default: no row is rewritten."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0023_rollout_flag_population"),
    ]

    operations = [
        migrations.AddField(
            model_name="source",
            name="stamps_to_drop",
            field=models.JSONField(blank=True, db_default={}, default=dict),
        ),
    ]
