"""A deleted source's flags leave the flag catalog (the Flags page, /api/flags): removals before this
one left them there for good."""

from django.db import migrations


def forget_deleted_sources_flags(apps, schema_editor):
    PublishedFlag = apps.get_model("gitops", "PublishedFlag")
    PublishedFlag.objects.filter(source__deleted_at__isnull=False).delete()


class Migration(migrations.Migration):
    dependencies = [("gitops", "0026_webhook_delivery_verified_index")]

    operations = [migrations.RunPython(forget_deleted_sources_flags, migrations.RunPython.noop)]
