"""The consumers of a source's ConfigMaps, as pages show them (issue 12). Pure: values in, values out.

A rollout stores the workloads of its current (or last) wave in
``Rollout.consumer_states``, and a source which workloads read which of its
ConfigMaps in ``Source.consumer_map``. Both are JSON the worker writes; this
module turns them into lines worded like the issue: "web 3/3 available",
"worker updating 1/2", "api failed: ProgressDeadlineExceeded".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gitops.consumers.workloads import KINDS, RESTART_ANNOTATION, Health

# What a page shows at most; the rest is counted.
CONSUMERS_SHOWN = 500
PINNED_HINT = f'{RESTART_ANNOTATION}: "false": watched, never restarted'


@dataclass(frozen=True)
class ConsumerLine:
    """One workload of a wave and the state its controller last reported."""

    cluster: str  # "" in states stored before clusters: the default cluster
    namespace: str
    kind: str
    name: str
    health: Health
    detail: str  # "3/3 available", "updating 1/2", "ProgressDeadlineExceeded: <message>"; "" at first
    restarted: bool
    restartable: bool
    refers_to: str = ""  # a Rollout's spec.workloadRef: the Deployment restarted in its place

    @property
    def state(self) -> str:
        """ "3/3 available", "updating 1/2", "failed: ProgressDeadlineExceeded"."""
        if self.health is Health.FAILED:
            return f"failed: {self.failure_reason}"
        return self.detail or "waiting for its controller"

    @property
    def text(self) -> str:
        return f"{self.name} {self.state}"

    @property
    def failure_reason(self) -> str:
        reason, _, _ = self.detail.partition(":")
        return reason.strip() or "failed"

    @property
    def failure_message(self) -> str:
        """The controller's own words after the reason, when it gave any."""
        if self.health is not Health.FAILED:
            return ""
        _, _, message = self.detail.partition(":")
        return message.strip()


def _health(value: Any) -> Health:
    try:
        return Health(str(value))
    except ValueError:
        return Health.PROGRESSING


def consumer_lines(states: Iterable[Mapping[str, Any]]) -> list[ConsumerLine]:
    """Every stored consumer state as a line, by namespace, kind and name."""
    lines = [
        ConsumerLine(
            cluster=str(state.get("cluster") or ""),
            namespace=str(state.get("namespace", "")),
            kind=str(state.get("kind", "")),
            name=str(state.get("name", "")),
            health=_health(state.get("health")),
            detail=str(state.get("detail") or ""),
            restarted=bool(state.get("restarted", False)),
            restartable=bool(state.get("restartable", True)),
            refers_to=str(state.get("refers_to") or ""),
        )
        for state in states
        if isinstance(state, Mapping)
    ]
    return sorted(lines, key=lambda line: (line.cluster, line.namespace, line.kind, line.name))


@dataclass(frozen=True)
class TargetConsumers:
    """The consumers of one target namespace of one cluster."""

    namespace: str
    lines: list[ConsumerLine]
    cluster: str = ""

    @property
    def healthy(self) -> int:
        return sum(1 for line in self.lines if line.health is Health.HEALTHY)


def consumers_by_target(states: Iterable[Mapping[str, Any]]) -> list[TargetConsumers]:
    groups: dict[tuple[str, str], list[ConsumerLine]] = {}
    for line in consumer_lines(states):
        groups.setdefault((line.cluster, line.namespace), []).append(line)
    return [TargetConsumers(namespace, lines, cluster) for (cluster, namespace), lines in groups.items()]


@dataclass(frozen=True)
class Reader:
    kind: str
    name: str


@dataclass(frozen=True)
class ConfigMapReaders:
    """The workloads in one namespace (of one cluster) that read one of the source's ConfigMaps."""

    namespace: str
    configmap: str
    readers: list[Reader]
    cluster: str = ""  # "": the default cluster


def configmap_readers(consumer_map: Mapping[str, Iterable[str]]) -> list[ConfigMapReaders]:
    """``{"namespace/Kind/name": [configmap, ...]}`` turned around: per ConfigMap, the workloads that read it.

    Keys of another cluster than the default one read ``cluster/namespace/Kind/name``. A key
    that is neither, with a workload kind, is left out.
    """
    readers: dict[tuple[str, str, str], list[Reader]] = {}
    for key, configmaps in consumer_map.items():
        parts = str(key).split("/")
        if len(parts) not in (3, 4):
            continue
        cluster = parts[0] if len(parts) == 4 else ""
        namespace, kind, name = parts[-3:]
        if not (namespace and name and kind in KINDS) or isinstance(configmaps, str | bytes):
            continue
        for configmap in configmaps:
            readers.setdefault((cluster, namespace, str(configmap)), []).append(Reader(kind, name))
    return [
        ConfigMapReaders(namespace, configmap, sorted(found, key=lambda r: (r.kind, r.name)), cluster)
        for (cluster, namespace, configmap), found in sorted(readers.items())
    ]
