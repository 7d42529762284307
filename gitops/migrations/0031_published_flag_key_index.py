"""The flag catalog indexed by (namespace, key hash): a revision's flag keys that other sources publish
are looked up at every pass, where no index led with either column and each such pass read the whole
catalog."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # Workers write the catalog after every step: the index is built without locking them out.
    atomic = False

    dependencies = [
        ("gitops", "0030_cluster_audit"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="publishedflag",
            index=models.Index(fields=["namespace", "key_hash"], name="published_flag_key"),
        ),
    ]
