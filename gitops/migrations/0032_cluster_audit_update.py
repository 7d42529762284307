"""The clusters' audit trail records update-cluster too (a registration's TLS allowance granted or
revoked in place): the action's choices gain "update". No data changes."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0031_published_flag_key_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="clusteraudit",
            name="action",
            field=models.CharField(
                choices=[("add", "add"), ("remove", "remove"), ("forget", "forget"), ("update", "update")],
                max_length=16,
            ),
        ),
    ]
