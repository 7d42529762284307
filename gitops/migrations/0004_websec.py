import django.utils.timezone
from django.db import migrations, models

# The change log stays append-only for every client, with one exception: a DELETE inside
# a transaction that set `sluice.archive_changes` (SET LOCAL, so it ends with that
# transaction). Only `gitops archive-changes` does that, after writing the rows it deletes
# to an archive file. UPDATE is always refused.
FORWARD = """
CREATE OR REPLACE FUNCTION gitops_change_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('sluice.archive_changes', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the change log (gitops_change) is append-only: % refused', TG_OP;
END
$$ LANGUAGE plpgsql;
"""

BACKWARD = """
CREATE OR REPLACE FUNCTION gitops_change_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the change log (gitops_change) is append-only: % refused', TG_OP;
END
$$ LANGUAGE plpgsql;
"""


class Migration(migrations.Migration):
    dependencies = [("gitops", "0003_trust_boundaries")]

    operations = [
        migrations.AddField(
            model_name="notification",
            name="next_attempt_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AddField(
            model_name="notification",
            name="lease_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="notification",
            index=models.Index(
                condition=models.Q(("status", "pending")), fields=["next_attempt_at"], name="notification_due"
            ),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
