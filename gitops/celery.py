import os

from celery import Celery
from celery.signals import worker_process_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sluice.settings")

app = Celery("gitops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["gitops"])


@worker_process_shutdown.connect
def _forget_exited_process(pid: int | None = None, **_: object) -> None:
    # Live gauges of a pool child that exited must not linger in the scrape.
    from gitops import metrics  # noqa: PLC0415 - needs Django settings

    metrics.process_exited(pid or os.getpid())
