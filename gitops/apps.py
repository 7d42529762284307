from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate, post_save


class GitopsConfig(AppConfig):
    name = "gitops"
    verbose_name = "Sluice reconciler"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Models are importable only once the app registry is ready.
        from gitops.roles import ensure_roles, make_new_users_viewers  # noqa: PLC0415

        post_migrate.connect(ensure_roles, sender=self)
        post_save.connect(make_new_users_viewers, sender=settings.AUTH_USER_MODEL)
