from django.apps import AppConfig


class GitopsConfig(AppConfig):
    name = "gitops"
    verbose_name = "Sluice reconciler"
    default_auto_field = "django.db.models.BigAutoField"
