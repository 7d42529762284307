import logging
import os
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sluice.settings")

app = Celery("gitops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["gitops"])

log = logging.getLogger(__name__)

# Long enough to outlive any redelivery, short enough that Redis forgets old tasks.
STARTS_TTL_SECONDS = 24 * 3600
_REDIS_TIMEOUT_SECONDS = 2


@worker_process_shutdown.connect
def _forget_exited_process(pid: int | None = None, **_: object) -> None:
    # Live gauges of a pool child that exited must not linger in the scrape.
    from gitops import metrics  # noqa: PLC0415 - needs Django settings

    metrics.process_exited(pid or os.getpid())


def starts_of_this_delivery(task: Task[Any, Any]) -> int:
    """How many times this delivery of ``task`` has started, this start included (1 the first time).

    Tasks are acknowledged late and rejected back onto the queue when their worker
    process dies, so a task that kills its worker (out of memory, a segfault, a
    SIGKILL) would start again, on one worker after another, forever. Its starts are
    counted in Redis under its id and retry number (a retry is a new delivery, a
    redelivery is not); a caller compares the count with SLUICE_MAX_TASK_DELIVERIES.
    When Redis cannot be reached the task is let through (0): the broker is Redis
    too, so that failure shows everywhere else.
    """
    import redis  # noqa: PLC0415 - only workers need it
    from django.conf import settings  # noqa: PLC0415 - settings are configured when tasks run

    if task.request.id is None:  # called directly, not through a worker
        return 1
    key = f"sluice:task-starts:{task.request.id}:{task.request.retries or 0}"
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=_REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=_REDIS_TIMEOUT_SECONDS,
    )
    try:
        with client.pipeline() as pipeline:
            pipeline.incr(key)
            pipeline.expire(key, STARTS_TTL_SECONDS)
            starts, _ = pipeline.execute()
    except redis.RedisError as exc:
        log.warning("cannot count the starts of task %s (%s); running it", task.request.id, exc)
        return 0
    finally:
        client.close()
    return int(starts)


def redelivered_too_often(task: Task[Any, Any]) -> int:
    """When this start of ``task`` is past SLUICE_MAX_TASK_DELIVERIES: how many earlier starts there
    were (each ended with its worker process dead), and the task must not run. Otherwise 0."""
    from django.conf import settings  # noqa: PLC0415 - settings are configured when tasks run

    starts = starts_of_this_delivery(task)
    if starts <= settings.SLUICE_MAX_TASK_DELIVERIES:
        return 0
    died = starts - 1
    log.error(
        "task %s[%s] is not started again: its worker process died %d times running it",
        task.name,
        task.request.id,
        died,
    )
    return died
