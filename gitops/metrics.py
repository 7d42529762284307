"""Prometheus metrics, shared by web and worker processes (prometheus_client's multiprocess mode).

Every process writes its samples under PROMETHEUS_MULTIPROC_DIR; the web
process's /metrics adds them up, so what workers do reaches the scrape.
prometheus_client reads that variable when it is first imported, so the
settings module sets it (``sluice.settings``), before any app code runs.
State that lives in the database (rollout phases, drift) is read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gitops.plan import Action

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
        sources = Source.objects.values_list("name", "last_plan", "target_clusters", "suspended")
        for name, plan, clusters, is_suspended in sources:
            counts = dict.fromkeys(clusters or [default], 0)
            for cluster, count in _drift_by_cluster(plan or {}).items():
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
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
