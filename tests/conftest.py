"""Shared fixtures.

Tests under tests/unit need nothing. Tests under tests/integration get the real
stack: it is started once per run (or reused when `make stack` already started
it), and the Django settings and the Celery app of this process are pointed at it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.commands import CommandLauncher
from tests.parallel import session_redis_url, stack_access, stack_start, worker_id
from tests.workers import LiveCacheProcess, WorkerProcess, poll

if TYPE_CHECKING:
    from gitops.cluster import Cluster

INTEGRATION_DIR = Path(__file__).parent / "integration"
# Worker processes inherit this, so their metrics reach this process's /metrics. sluice.settings, which
# pytest-django loads first, sets it (.data/metrics); under xdist each session counts in a directory of
# its own, or the two sessions' workers would add to each other's counters.
if worker_id() is not None:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"sluice-metrics-{worker_id()}-")
    atexit.register(shutil.rmtree, os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
else:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sluice-metrics-"))

# Fixtures that change what every session on the stack sees (tests/parallel.py).
EXCLUSIVE_FIXTURES = frozenset({"cordoned_nodes"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
        if EXCLUSIVE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.exclusive)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Under ``pytest -n 2`` a test holds the stack shared, or alone when marked ``exclusive``:
    around its setup, call and teardown, so a session fixture it starts is inside too."""
    with stack_access(exclusive=item.get_closest_marker("exclusive") is not None):
        return (yield)


def _point_django_at(env: dict[str, str]) -> None:
    import dj_database_url
    from django.conf import settings

    from gitops.celery import app

    parsed = dj_database_url.parse(env["DATABASE_URL"])
    # Connections share this dict, so update it in place rather than replace it.
    database = settings.DATABASES["default"]
    for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT"):
        database[key] = parsed.get(key, "")
    settings.KUBECONFIG = env["KUBECONFIG"]
    settings.REDIS_URL = env["REDIS_URL"]
    settings.CELERY_BROKER_URL = env["CELERY_BROKER_URL"]
    settings.CELERY_RESULT_BACKEND = env["REDIS_URL"]
    app.conf.update(broker_url=env["CELERY_BROKER_URL"], result_backend=env["REDIS_URL"])


def _forget_stale_tasks(env: dict[str, str]) -> None:
    """A reused stack's broker still holds what earlier runs queued, scheduled or left unacknowledged
    (a worker killed mid-task, a retry due in an hour). They name sources of a test database that is
    gone, and this run's sources reuse those ids: a worker would take them up as this run's work."""
    import redis

    broker = redis.Redis.from_url(env["CELERY_BROKER_URL"])
    queues = {
        member.split(b"\x06\x16")[-1]
        for binding in broker.scan_iter(match="_kombu.binding.*")
        for member in broker.smembers(binding)
    }
    queues = {queue for queue in queues if queue and broker.type(queue) == b"list"}
    broker.delete(b"unacked", b"unacked_index", *queues)
    broker.close()


def _uncordon_simulated_nodes(env: dict[str, str]) -> None:
    """A run killed inside `cordoned_nodes` leaves a reused stack's nodes cordoned; undo that."""
    from kubernetes import client, config

    from tests.workloads import set_unschedulable

    with config.new_client_from_config(config_file=env["KUBECONFIG"]) as api_client:
        set_unschedulable(client.CoreV1Api(api_client), False, at_session_start=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    from devstack import Stack

    local_stack = Stack()
    with stack_start():
        started_here = not local_stack.is_up()
        env = local_stack.up()
    # A session of `pytest -n 2` has a Redis database of its own: its queues, results and caches.
    for key in ("REDIS_URL", "CELERY_BROKER_URL"):
        env[key] = session_redis_url(env[key])
    os.environ.update(env)
    _point_django_at(env)
    if not started_here:
        _uncordon_simulated_nodes(env)
        _forget_stale_tasks(env)
    yield env
    # Under xdist the other session may still be running: the stack stays up (scripts/test.sh stops it).
    if started_here and worker_id() is None and os.environ.get("SLUICE_KEEP_STACK") != "1":
        local_stack.down()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    stack: dict[str, str], django_db_modify_db_settings_parallel_suffix: None
) -> None:
    """pytest-django calls this just before it creates the test database; the stack's settings come
    first, then pytest-django's suffix per xdist session (``test_sluice_gw0``). The test process's own
    sessions may TRUNCATE the append-only tables (migration 0038), as the reset between tests does;
    the workers' sessions, like a deployment's, may not."""
    from django.conf import settings

    options = settings.DATABASES["default"].setdefault("OPTIONS", {})
    options["options"] = f"{options.get('options', '')} -c sluice.allow_truncate=on".strip()


@pytest.fixture(scope="session")
def test_database_url(stack: dict[str, str], django_db_setup: None) -> str:
    """DATABASE_URL of the test database pytest-django created, for worker processes."""
    from django.db import connection

    parts = urlsplit(stack["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.fixture(scope="session")
def worker_env(
    stack: dict[str, str], test_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return {
        **os.environ,
        **stack,
        "DATABASE_URL": test_database_url,
        "DJANGO_SETTINGS_MODULE": "sluice.settings_test",
        "SLUICE_DATA_DIR": str(tmp_path_factory.mktemp("worker-data")),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def celery_worker(worker_env: dict[str, str]) -> Iterator[WorkerProcess]:
    """One real worker process shared by the run."""
    worker = WorkerProcess(worker_env).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def manage() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """``manage(*args, env=..., timeout=...)``: ``python manage.py *args`` as a real process of its own,
    answered like ``subprocess.run(..., capture_output=True, text=True)``. One launcher, shared by the
    run, forks each command after importing the heavy third-party libraries once (tests/commands.py)."""
    launcher = CommandLauncher()

    def run(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return launcher.run(list(args), env=env, timeout=timeout)

    yield run
    launcher.close()


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator:
    """Starts extra workers a test can kill or restart; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(**options) -> WorkerProcess:
        worker = WorkerProcess(worker_env, **options).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


# Quick to pick new namespaces up, as the tests make fresh ones all the time.
LIVE_CACHE_TEST_ENV = {"SLUICE_LIVE_CACHE_RESCAN_SECONDS": "1"}


@pytest.fixture
def start_live_cache(worker_env: dict[str, str]) -> Iterator[Callable[..., LiveCacheProcess]]:
    """Starts ``gitops live-cache`` processes a test can stop, kill or restart; all stop afterwards.

    Tests without it run with no live cache: planning then reads the cluster, and nothing
    wakes a source when its objects change, so their reconciles happen only when asked."""
    started: list[LiveCacheProcess] = []

    def start(*, wait: bool = True, **overrides: str) -> LiveCacheProcess:
        cache = LiveCacheProcess(worker_env, env_overrides={**LIVE_CACHE_TEST_ENV, **overrides}).start()
        started.append(cache)
        if wait:
            poll(cache.serving, timeout=60, what="the live cache to take its lease")
        return cache

    yield start
    for cache in started:
        cache.stop()


@pytest.fixture
def live_cache(start_live_cache) -> LiveCacheProcess:
    """One live-cache process for the test, serving."""
    return start_live_cache()


@pytest.fixture(scope="session")
def cluster(stack: dict[str, str]):
    from gitops.cluster import Cluster

    with Cluster(stack["KUBECONFIG"]) as connected:
        yield connected


@pytest.fixture
def namespace(cluster) -> str:
    """A fresh namespace, left in place: the stack's namespace controller could delete it, but
    emptying a namespace costs it a LIST and a DELETE per resource type, on two shared cores,
    for a stack that `down` discards anyway."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.create_namespace(name)
    return name


# -- several clusters and real workloads ---------------------------------------------------


@pytest.fixture(scope="session")
def member_kubeconfig_contexts(stack: dict[str, str]) -> list[str]:
    """The contexts of the member clusters in the stack's kubeconfig (``member-1``, ``member-2``)."""
    return stack["SLUICE_MEMBER_CLUSTERS"].split(",")


@pytest.fixture(scope="session")
def cluster_for(stack: dict[str, str]) -> Iterator[Callable[[str], Cluster]]:
    """``cluster_for(context)``: a gitops Cluster for one context of the stack's kubeconfig."""
    from gitops.cluster import Cluster

    connected: dict[str, Cluster] = {}

    def connect(context: str) -> Cluster:
        if context not in connected:
            connected[context] = Cluster(stack["KUBECONFIG"], context=context)
        return connected[context]

    yield connect
    for opened in connected.values():
        opened.close()


@pytest.fixture(scope="session")
def kube_client(stack: dict[str, str]) -> Iterator[Callable[..., Any]]:
    """``kube_client(context=None)``: an official kubernetes ApiClient for a context (default: local)."""
    from kubernetes import config

    clients: dict[str | None, Any] = {}

    def connect(context: str | None = None) -> Any:
        if context not in clients:
            clients[context] = config.new_client_from_config(config_file=stack["KUBECONFIG"], context=context)
        return clients[context]

    yield connect
    for opened in clients.values():
        opened.close()


@pytest.fixture(scope="session")
def core_api(kube_client):
    from kubernetes import client

    return client.CoreV1Api(kube_client())


@pytest.fixture(scope="session")
def apps_api(kube_client):
    from kubernetes import client

    return client.AppsV1Api(kube_client())


@pytest.fixture
def deploy_consumer(apps_api, cluster):
    """Creates a Deployment on the default cluster that reads a ConfigMap through ``envFrom``
    (the ConfigMap is created when missing) and, unless ``wait=False``, waits for its rollout."""
    from tests.workloads import consumer_deployment, wait_for_rollout

    def deploy(namespace: str, name: str = "web", *, configmap: str = "app", wait: bool = True, **options):
        if cluster.get_configmap(namespace, configmap) is None:
            cluster.apply_configmap(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": configmap, "namespace": namespace},
                    "data": {"GREETING": "hello"},
                },
                field_manager="tests",
            )
        apps_api.create_namespaced_deployment(namespace, consumer_deployment(name, configmap, **options))
        if wait:
            return wait_for_rollout(apps_api, namespace, name)
        return apps_api.read_namespaced_deployment(name, namespace)

    return deploy


@pytest.fixture
def cordoned_nodes(core_api) -> Iterator[list[str]]:
    """Every simulated node cordoned for the test, so no new pod can be scheduled.

    The stack is shared by the whole run: the nodes are uncordoned afterwards whatever happens."""
    from tests.workloads import set_unschedulable

    try:
        yield set_unschedulable(core_api, True)
    finally:
        set_unschedulable(core_api, False)
