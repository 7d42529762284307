"""What a sync would do, without doing it: fetch, validate and plan; nothing is applied or recorded.

Besides the ConfigMaps, a preview names the workloads the change reaches: those
a step would restart (``consumers: restart``) or wait for (``watch``, or a
workload pinned with ``sluice.dev/restart: "false"``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gitops.cluster import get_cluster
from gitops.consumers.wave import wave_consumers
from gitops.consumers.workloads import Workload, consumed_hash
from gitops.desired.policy import ConsumerMode
from gitops.errors import GitopsError
from gitops.fetch.revisions import revision_desired_state, revision_fetch
from gitops.models import ManagedObject, Revision, Source
from gitops.plan import Plan, plan
from gitops.record.inventory import managed_keys
from gitops.rollout.step import live_state


@dataclass(frozen=True)
class ConsumerEffect:
    workload: Workload
    restart: bool  # False: a step would wait for it, not restart it
    reads: tuple[str, ...]  # the changed ConfigMaps it reads

    def as_dict(self) -> dict[str, object]:
        w = self.workload
        action = "restart" if self.restart else "wait"
        return {
            "cluster": w.cluster,
            "kind": w.kind,
            "namespace": w.namespace,
            "name": w.name,
            "action": action,
            "reads": list(self.reads),
        }


@dataclass(frozen=True)
class Preview:
    revision: Revision
    plan: Plan | None  # None: the revision is rejected
    consumers: tuple[ConsumerEffect, ...] = ()


def source_preview(source: Source, *, cluster: str | None = None) -> Preview:
    """The branch tip, its plan against the clusters, and the workloads the change would reach.

    ``cluster`` keeps only that cluster's part of the plan. A cluster that does not
    answer shows its objects as ``unreachable``.
    """
    revision, _ = revision_fetch(source)
    desired = (
        None if revision.outcome == Revision.Outcome.REJECTED else revision_desired_state(source, revision)
    )
    if desired is None:
        revision.refresh_from_db()
        return Preview(revision, None)
    live = live_state(source, desired)
    planned = plan(
        desired,
        live.objects,
        source=source.name,
        commit=revision.commit,
        managed=managed_keys(source),
        unreachable=live.reasons(),
    )
    if cluster is not None:
        planned = replace(planned, items=tuple(item for item in planned.items if item.cluster == cluster))
    mode = desired.policy.rollout.consumers
    return Preview(
        revision, planned, _consumer_effects(source, planned, mode) if mode != ConsumerMode.IGNORE else ()
    )


def _consumer_effects(source: Source, planned: Plan, mode: ConsumerMode) -> tuple[ConsumerEffect, ...]:
    changed = {item.key: item.after_hash for item in planned.actionable}
    if not changed:
        return ()
    hashes = {
        (cluster, namespace, name): content_hash
        for cluster, namespace, name, content_hash in ManagedObject.objects.filter(source=source).values_list(
            "cluster", "namespace", "name", "content_hash"
        )
    }
    hashes.update({key: value for key, value in changed.items() if value})
    by_cluster: dict[str, set[tuple[str, str]]] = {}
    for cluster, namespace, name in changed:
        by_cluster.setdefault(cluster, set()).add((namespace, name))
    effects = []
    for cluster, keys in sorted(by_cluster.items()):
        try:
            workloads = wave_consumers(get_cluster(cluster), keys)
        except GitopsError:
            continue  # an unreachable cluster's objects are shown as such in the plan
        for workload in workloads:
            place = (cluster, workload.namespace)
            managed = {name: h for (c, ns, name), h in hashes.items() if (c, ns) == place}
            wanted = consumed_hash(workload, managed)
            restart = mode == ConsumerMode.RESTART and workload.restartable and wanted != workload.config_hash
            reads = tuple(
                sorted(name for ns, name in keys if ns == workload.namespace and name in workload.consumes)
            )
            effects.append(ConsumerEffect(workload, restart, reads))
    return tuple(effects)
