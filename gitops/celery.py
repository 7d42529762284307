import functools
import logging
import os
from typing import Any

from celery import Celery, Task
from celery.beat import PersistentScheduler
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from gitops.memory import limit_malloc_arenas, tune_garbage_collector

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sluice.settings")
# Before any thread starts; prefork children inherit it.
limit_malloc_arenas()

app = Celery("gitops")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["gitops"])

log = logging.getLogger(__name__)


class HeartbeatScheduler(PersistentScheduler):
    """Celery's own scheduler, touching beat's heartbeat file (``gitops.heartbeat``) each round: beat's
    liveness probe tells a beat that stopped sending (a hung broker connection) from one that runs."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        from gitops.heartbeat import heartbeat_touch  # noqa: PLC0415 - needs Django settings

        # The round's wait until the next is known once it has run: the deadline allows for it.
        wait = float(super().tick(*args, **kwargs))
        heartbeat_touch("beat", period=wait)
        return wait


# Long enough to outlive any redelivery, short enough that Redis forgets tasks it never saw finish.
STARTS_TTL_SECONDS = 24 * 3600
_REDIS_TIMEOUT_SECONDS = 2


@worker_init.connect
def _fewer_garbage_collections(**_: object) -> None:
    # Workers only (not the web, beat or a command that imports the tasks); prefork children inherit it.
    tune_garbage_collector()


@worker_init.connect
def _serve_metrics(**_: object) -> None:
    # A worker in a pod of its own shares no metrics directory with the web: it serves its own.
    from django.conf import settings  # noqa: PLC0415 - needs Django settings

    from gitops import metrics  # noqa: PLC0415 - needs Django settings

    port = int(getattr(settings, "SLUICE_WORKER_METRICS_PORT", 0))
    if port:
        try:
            metrics.worker_metrics_serve(port)
        except OSError:  # the worker still works; without its metrics, and says so
            log.exception(
                "could not serve the worker's metrics on port %d (SLUICE_WORKER_METRICS_PORT)", port
            )


@worker_process_init.connect
def _forget_metrics_socket(**_: object) -> None:
    from gitops import metrics  # noqa: PLC0415 - needs Django settings

    metrics.worker_metrics_forget()


@worker_process_shutdown.connect
def _forget_exited_process(pid: int | None = None, **_: object) -> None:
    # Live gauges of a pool child that exited must not linger in the scrape.
    from gitops import metrics  # noqa: PLC0415 - needs Django settings

    metrics.process_exited(pid or os.getpid())


def _eager(task: Task[Any, Any] | None) -> bool:
    """A task run in the caller's process (``apply``): its connection is the caller's, left alone."""
    return bool(task is not None and getattr(task.request, "is_eager", False))


@task_prerun.connect
def _database_before_task(task: Task[Any, Any] | None = None, **_: object) -> None:
    # What Django does when a request starts: a connection past DATABASE_CONN_MAX_AGE, broken, or
    # left mid-transaction is closed; a healthy one is kept (CELERY_DB_REUSE_MAX in the settings).
    # The health check is made here, outside any transaction: a kept connection that PostgreSQL
    # dropped (a restart) is replaced before a task's first atomic block could meet it.
    from django.db import close_old_connections, connections  # noqa: PLC0415 - needs Django settings

    if _eager(task):
        return
    close_old_connections()
    for kept in connections.all(initialized_only=True):
        kept.close_if_health_check_failed()


def redis_client() -> Any:
    """The process's Redis client (the result backend's server), for small counters beside the queue."""
    return _redis()


@functools.cache
def _redis() -> Any:
    """One client per process: its pool keeps the connection between tasks (and is reset after a fork)."""
    import redis  # noqa: PLC0415 - only workers need it
    from django.conf import settings  # noqa: PLC0415 - settings are configured when tasks run

    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=_REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=_REDIS_TIMEOUT_SECONDS,
    )


def _unfinished_key(task_id: str) -> str:
    return f"sluice:task-unfinished:{task_id}"


def unfinished_starts(task: Task[Any, Any]) -> int:
    """How many times ``task`` has started without finishing, this start included (1 normally).

    Tasks are acknowledged late and put back on the queue when their worker process
    dies, so a task that kills its worker (out of memory, a segfault, a SIGKILL)
    would start again, on one worker after another, forever. Each start is counted
    in Redis under the task's id, and the count is cleared when the task finishes in
    any way, a retry included (``_forget_finished_task``): what remains counts the
    starts whose worker died. When Redis cannot be reached the task is let through
    (0): the broker is Redis too, so that failure shows everywhere else.
    """
    import redis  # noqa: PLC0415 - only workers need it

    if task.request.id is None:  # called directly, not through a worker
        return 1
    key = _unfinished_key(task.request.id)
    client = _redis()
    try:
        with client.pipeline() as pipeline:
            pipeline.incr(key)
            pipeline.expire(key, STARTS_TTL_SECONDS)
            starts, _ = pipeline.execute()
    except redis.RedisError as exc:
        log.warning("cannot count the starts of task %s (%s); running it", task.request.id, exc)
        return 0
    return int(starts)


@task_postrun.connect
def _forget_finished_task(task_id: str | None = None, **_: object) -> None:
    import redis  # noqa: PLC0415 - only workers need it

    if task_id is None:
        return
    try:
        _redis().delete(_unfinished_key(task_id))
    except redis.RedisError as exc:
        log.warning("cannot clear the start count of task %s: %s", task_id, exc)


@task_postrun.connect
def _database_after_task(task: Task[Any, Any] | None = None, **_: object) -> None:
    from django.db import close_old_connections  # noqa: PLC0415 - needs Django settings

    if not _eager(task):
        close_old_connections()  # as Django does when a request ends


def redelivered_too_often(task: Task[Any, Any]) -> int:
    """When ``task`` has already started SLUICE_MAX_TASK_DELIVERIES times without finishing (its
    worker process died each time): that number, and the task must not run. Otherwise 0."""
    from django.conf import settings  # noqa: PLC0415 - settings are configured when tasks run

    died = unfinished_starts(task) - 1
    if died < settings.SLUICE_MAX_TASK_DELIVERIES:
        return 0
    log.error(
        "task %s[%s] is not started again: its worker process died %d times running it",
        task.name,
        task.request.id,
        died,
    )
    return died
