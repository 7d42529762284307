"""The clusters' audit trail (add, remove, forget: append-only), and a cluster's --allow-unverified-tls
kept on its row, so that a kubeconfig rewritten in place to skip the certificate check is refused."""

import django.utils.timezone
import yaml
from django.db import migrations, models


def _reaches_unverified(kubeconfig, context):
    """Whether the kubeconfig, as it is now, reaches its server without checking its certificate (what
    the client calls ``unverified``); None when it cannot tell (the file unreadable here, a context
    missing). Parsed, not loaded: loading runs a kubeconfig's exec plugin."""
    try:
        with open(kubeconfig, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
        context = context or config["current-context"]
        named = next(item["context"] for item in config["contexts"] if item["name"] == context)
        cluster = next(item["cluster"] for item in config["clusters"] if item["name"] == named["cluster"])
        return bool(cluster.get("insecure-skip-tls-verify")) or not str(cluster["server"]).startswith(
            "https://"
        )
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError, StopIteration):
        return None


def allow_what_works_today(apps, schema_editor):
    """A cluster registered before this migration works whatever its kubeconfig says, and its row cannot
    say whether an administrator allowed an unverified server (add-cluster did not keep it). Allowed
    where its kubeconfig reaches the server unverified now, or cannot be read where this migration runs
    (the workers may hold files the migrating host does not): refused there, the cluster stopped
    working, and only removing and adding it again could change the flag. Not allowed where it is
    verified now, so that rewriting it unverified later is refused."""
    Cluster = apps.get_model("gitops", "Cluster")
    allowed = [
        (record, reaches)
        for record in Cluster.objects.filter(in_cluster=False)
        if (reaches := _reaches_unverified(record.kubeconfig, record.context)) is not False
    ]
    Cluster.objects.filter(pk__in=[record.pk for record, _ in allowed]).update(allow_unverified_tls=True)
    if allowed:
        _say_allowed(allowed)


def _say_allowed(allowed):
    """Names the clusters allowed, on migrate's output (after its "Applying ..." line), so an operator
    can revoke where the allowance is not wanted: a cluster allowed only because its kubeconfig could not
    be read on the host that ran migrate may well check its server's certificate where the workers run."""
    print()  # migrate's "Applying ..." line is ended only after this step
    print(
        "    0030: these clusters may reach their server without checking its certificate "
        "(--allow-unverified-tls), as they did before:"
    )
    for record, reaches in allowed:
        why = (
            "its kubeconfig does so now"
            if reaches
            else f"its kubeconfig {record.kubeconfig} could not be read (or parsed) on this host"
        )
        # A row without a name is only a stand-in (the unit tests'); every stored row has one.
        print(f"      {getattr(record, 'name', f'id {record.pk}')}: {why}")
    print(
        "    Revoke where that is not wanted: python manage.py gitops update-cluster NAME "
        "--no-allow-unverified-tls"
    )


# The model refuses updates and deletes of audit rows; only the database can stop a raw query.
AUDIT_APPEND_ONLY = """
CREATE FUNCTION gitops_clusteraudit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail (gitops_clusteraudit) is append-only: % refused', TG_OP;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER gitops_clusteraudit_append_only
    BEFORE UPDATE OR DELETE ON gitops_clusteraudit
    FOR EACH ROW EXECUTE FUNCTION gitops_clusteraudit_append_only();
"""

AUDIT_APPEND_ONLY_UNDO = """
DROP TRIGGER IF EXISTS gitops_clusteraudit_append_only ON gitops_clusteraudit;
DROP FUNCTION IF EXISTS gitops_clusteraudit_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0029_webhook_body_digest"),
    ]

    operations = [
        migrations.AddField(
            model_name="cluster",
            name="allow_unverified_tls",
            field=models.BooleanField(
                default=False,
                help_text="may its kubeconfig reach the server without checking its certificate",
            ),
        ),
        migrations.RunPython(allow_what_works_today, migrations.RunPython.noop),
        migrations.CreateModel(
            name="ClusterAudit",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("cluster", models.CharField(max_length=63)),
                (
                    "action",
                    models.CharField(
                        choices=[("add", "add"), ("remove", "remove"), ("forget", "forget")], max_length=16
                    ),
                ),
                ("actor", models.CharField(max_length=150)),
                (
                    "via",
                    models.CharField(
                        choices=[("cli", "cli"), ("dashboard", "dashboard"), ("api", "api")], max_length=16
                    ),
                ),
                ("before", models.JSONField(blank=True, null=True)),
                ("after", models.JSONField(blank=True, null=True)),
                ("message", models.TextField(blank=True, default="")),
                ("at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
            ],
            options={
                "ordering": ["-at", "-id"],
                "indexes": [models.Index(fields=["cluster", "-at"], name="gitops_clus_cluster_bdd7de_idx")],
            },
        ),
        migrations.RunSQL(AUDIT_APPEND_ONLY, AUDIT_APPEND_ONLY_UNDO),
    ]
