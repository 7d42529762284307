from django.apps import AppConfig
from django.db.models.signals import post_migrate


class GitopsConfig(AppConfig):
    name = "gitops"
    verbose_name = "Sluice reconciler"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Models are importable only once the app registry is ready.
        from gitops.roles import ensure_roles  # noqa: PLC0415

        post_migrate.connect(ensure_roles, sender=self)
