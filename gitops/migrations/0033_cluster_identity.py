"""A registered cluster keeps the identity it was registered for (its kube-system namespace's uid): a
kubeconfig rewritten in place to reach another cluster is refused at the next client build. Existing
registrations have none until ``gitops update-cluster NAME --record-identity`` (no cluster is asked here).
A database default too: a process of the release before, during an upgrade, inserts rows without it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0032_cluster_audit_update"),
    ]

    operations = [
        migrations.AddField(
            model_name="cluster",
            name="identity",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="its kube-system namespace's uid, when registered",
                max_length=64,
            ),
        ),
    ]
