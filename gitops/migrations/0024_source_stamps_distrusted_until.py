"""Until when planning reads a source's objects instead of trusting the live cache's stamps of them
(``Source.stamps_distrusted_until``): set when a worker could not drop the stamps its writes outdated.
A nullable column with no default: adding it rewrites no row."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0023_rollout_flag_population"),
    ]

    operations = [
        migrations.AddField(
            model_name="source",
            name="stamps_distrusted_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
