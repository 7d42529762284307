"""A verified push's body digest: the same body under another delivery id is a replay, not a push."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0028_published_flag_reach"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookdelivery",
            name="body_digest",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AddConstraint(
            model_name="webhookdelivery",
            constraint=models.UniqueConstraint(
                condition=models.Q(
                    ("outcome__in", ["accepted", "ignored"]), models.Q(("body_digest", ""), _negated=True)
                ),
                fields=("source", "body_digest"),
                name="delivery_body_once",
            ),
        ),
    ]
