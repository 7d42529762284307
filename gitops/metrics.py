"""Prometheus metrics, shared by web and worker processes (prometheus_client's multiprocess mode).

Every process writes its samples under PROMETHEUS_MULTIPROC_DIR; the web
process's /metrics adds them up, so what workers do reaches the scrape where they
share the directory (one host, or Compose's volume). prometheus_client reads that
variable when it is first imported, so the settings module sets it (``sluice.settings``),
before any app code runs. Where workers run apart from the web (a pod each), each serves
its own samples on SLUICE_WORKER_METRICS_PORT (``worker_metrics_serve``).
State that lives in the database (rollout phases, drift) is read at scrape time.
"""

from __future__ import annotations

import contextlib
import glob
import hmac
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.db.models.fields.json import KeyTransform
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gitops.plan import Action

log = logging.getLogger(__name__)

# A sample file is named by its process: by the pid alone, two containers sharing the directory (Compose's
# volume, each with its own pid numbering) wrote one file, each over the other's entries. The host
# (a container's own name) comes first; prometheus_client splits file names at "_".
_HOST = socket.gethostname().replace("_", "-")


def process_identifier(pid: int | None = None) -> str:
    return f"{_HOST}-{pid or os.getpid()}"


# Before any metric below is made: each takes the value class as it is then.
values.ValueClass = values.MultiProcessValue(process_identifier)  # type: ignore[no-untyped-call]

DRIFT_ACTIONS = (Action.DRIFT.value, Action.SELF_HEAL.value)

RECONCILES = Counter("sluice_reconcile_total", "Reconciles of a source, by result", ["source", "result"])
RECONCILE_SECONDS = Histogram(
    "sluice_reconcile_duration_seconds",
    "Time to fetch, validate, plan, apply and record",
    ["source"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
FETCH_SECONDS = Histogram(
    "sluice_git_fetch_duration_seconds",
    "Time to fetch a source's branch",
    ["source"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
APPLY_ERRORS = Counter("sluice_apply_errors_total", "Changes the cluster refused", ["source", "cluster"])
CLUSTER_UNREACHABLE = Counter(
    "sluice_cluster_unreachable_total",
    "Times a cluster did not answer, answered with errors or refused Sluice's credentials",
    ["cluster"],
)
WEBHOOK_DELIVERIES = Counter(
    "sluice_webhook_deliveries_total", "Push notifications received, by outcome", ["provider", "result"]
)


class DatabaseCollector(Collector):
    """Gauges read from the database when scraped: one query each, however many sources."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from gitops.models import Rollout, Source  # noqa: PLC0415 - needs the app registry

        phases = GaugeMetricFamily(
            "sluice_rollout_phase",
            "1 for the phase of each source's latest rollout",
            labels=["source", "phase"],
        )
        latest = (
            Rollout.objects.filter(source__deleted_at__isnull=True)
            .order_by("source_id", "-id")
            .distinct("source_id")
            .values_list("source__name", "phase")
        )
        for source, phase in latest:
            phases.add_metric([source, phase], 1)
        yield phases
        drift = GaugeMetricFamily(
            "sluice_drift_objects",
            "Objects edited in the cluster, per source and cluster",
            labels=["source", "cluster"],
        )
        suspended = GaugeMetricFamily(
            "sluice_source_suspended", "1 while a source's automatic syncs are suspended", labels=["source"]
        )
        default = str(settings.SLUICE_CLUSTER_NAME)
        # The plan's own count, not the plan: a stored plan runs to megabytes, and every scrape read every
        # source's whole. Only a plan stored before the count was kept is read, for its items.
        sources = list(
            Source.objects.annotate(counted=KeyTransform("drift_by_cluster", "last_plan")).values_list(
                "pk", "name", "counted", "target_clusters", "suspended"
            )
        )
        uncounted = [pk for pk, _, counted, _, _ in sources if not isinstance(counted, dict)]
        plans = (
            dict(Source.objects.filter(pk__in=uncounted).values_list("pk", "last_plan")) if uncounted else {}
        )
        for pk, name, counted, clusters, is_suspended in sources:
            counts = dict.fromkeys(clusters or [default], 0)
            plan = {"drift_by_cluster": counted} if isinstance(counted, dict) else plans.get(pk) or {}
            for cluster, count in _drift_by_cluster(plan).items():
                counts[cluster or default] = counts.get(cluster or default, 0) + count
            for cluster, count in counts.items():
                drift.add_metric([name, cluster], count)
            suspended.add_metric([name], 1 if is_suspended else 0)
        yield drift
        yield suspended


def _drift_by_cluster(plan: dict[str, Any]) -> dict[str, int]:
    """A stored plan's drifted objects by cluster: counted over every object as the plan was stored (its
    items are its first 500 only), or from its items for a plan stored before that count was kept."""
    counted = plan.get("drift_by_cluster")
    if isinstance(counted, dict):
        return {str(cluster): int(count) for cluster, count in counted.items()}
    found: dict[str, int] = {}
    for item in plan.get("items", []):
        if item.get("action") in DRIFT_ACTIONS:
            found[item.get("cluster") or ""] = found.get(item.get("cluster") or "", 0) + 1
    return found


def render() -> tuple[bytes, str]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(DatabaseCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def process_exited(pid: int) -> None:
    """Drops a dead process's live gauges (counters and histograms stay summed)."""
    multiprocess.mark_process_dead(process_identifier(pid))  # type: ignore[no-untyped-call]


def metrics_allowed(authorization: str) -> bool:
    """Whether a caller who sent ``authorization`` may read the metrics: the SLUICE_METRICS_TOKEN bearer,
    or anyone where SLUICE_METRICS_PUBLIC says so and no token is set."""
    token = str(getattr(settings, "SLUICE_METRICS_TOKEN", ""))
    if not token:
        return bool(settings.SLUICE_METRICS_PUBLIC)
    sent = authorization.removeprefix("Bearer ").strip()
    return hmac.compare_digest(sent.encode(), token.encode())


class _ThisHostsSamples(Collector):
    """The samples this host's processes wrote (files named by host, ``process_identifier``): where the
    directory is shared between containers (Compose's volume), every file would be the web's and every
    other worker's counters too, counted again by each worker's scrape. Several workers of one host
    sharing a directory are one host here: give each its own directory, or serve none."""

    def collect(self) -> Iterator[Any]:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        # The host exactly (a host "worker" is not "worker-2"): the name then has a pid alone after it.
        ours = re.compile(rf"_{re.escape(_HOST)}-\d+\.db$")
        files = [path for path in glob.glob(os.path.join(directory, "*.db")) if ours.search(path)]
        return iter(multiprocess.MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


def _worker_metrics_app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """What this worker's processes wrote, for its own scrape; the database's gauges are the web's
    /metrics'. Guarded as the web's /metrics is."""
    if environ.get("PATH_INFO") != "/metrics":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; the metrics are at /metrics\n"]
    if not metrics_allowed(str(environ.get("HTTP_AUTHORIZATION", ""))):
        start_response("401 Unauthorized", [("Content-Type", "text/plain")])
        return [b"unauthorized\n"]
    registry = CollectorRegistry()
    registry.register(_ThisHostsSamples())
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
    return [generate_latest(registry)]


class _QuietHandler(WSGIRequestHandler):
    # A caller that connects and sends nothing lets go of its thread after this (no scrape waits on it).
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:  # a scrape every few seconds is no news
        pass


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """A thread per request, at most MAX_SCRAPES at once: one slow or silent caller holds up no other
    scrape, and callers past the cap are let go at once rather than piling threads into the worker."""

    daemon_threads = True
    address_family = socket.AF_INET6
    _slots = threading.BoundedSemaphore(4)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        # Both IPv6 and IPv4 callers on the one socket (an IPv6-only cluster scrapes too).
        with contextlib.suppress(OSError, AttributeError):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _IPv4MetricsServer(_MetricsServer):
    address_family = socket.AF_INET


# The worker's main process's server and that process's pid: closed in its forked children only (the solo
# pool sends worker_process_init in the main process itself).
_serving: list[tuple[WSGIServer, int]] = []


def worker_metrics_serve(port: int) -> WSGIServer:
    """Serves the worker's /metrics on ``port`` (every address) from a daemon thread of the calling
    process, the worker's main one; its pool's children, forked later, close their copy of the socket
    (``worker_metrics_forget``)."""
    try:
        server: WSGIServer = make_server("::", port, _worker_metrics_app, _MetricsServer, _QuietHandler)
    except OSError:  # a host without IPv6
        server = make_server("0.0.0.0", port, _worker_metrics_app, _IPv4MetricsServer, _QuietHandler)  # noqa: S104
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    _serving.append((server, os.getpid()))
    log.info("serving the worker's metrics on port %d", port)
    return server


def worker_metrics_forget() -> None:
    """In a forked pool child: its copy of the listening socket, which it never serves, is closed."""
    for server, serving_pid in _serving:
        if serving_pid != os.getpid():
            server.socket.close()
    _serving[:] = [(server, pid) for server, pid in _serving if pid == os.getpid()]
