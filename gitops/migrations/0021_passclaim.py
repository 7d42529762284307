"""Fences the reconcile lock: a pass's claim, renewed while it writes (``locks.PassFence``)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0020_source_sync_queued_at"),
    ]

    operations = [
        migrations.CreateModel(
            name="PassClaim",
            fields=[
                ("source_id", models.BigIntegerField(primary_key=True, serialize=False)),
                ("holder", models.CharField(blank=True, default="", max_length=32)),
                ("alive_at", models.DateTimeField()),
            ],
        ),
    ]
