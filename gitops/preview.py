"""What a sync would do, without doing it: fetch, validate and plan; nothing is applied or recorded.

Besides the ConfigMaps, a preview names the workloads the change reaches: those
a step would restart (``consumers: restart``) or wait for (``watch``, or a
workload pinned with ``sluice.dev/restart: "false"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gitops.cluster import get_cluster
from gitops.cluster.live import live_configmaps
from gitops.consumers.wave import wave_consumers
from gitops.consumers.workloads import Workload, consumed_hash
from gitops.desired.policy import ConsumerMode
from gitops.fetch.revisions import revision_desired_state, revision_fetch
from gitops.models import ManagedObject, Revision, Source
from gitops.plan import Plan, plan
from gitops.record.inventory import managed_keys, managed_namespaces
from gitops.rollout.step import in_scope


@dataclass(frozen=True)
class ConsumerEffect:
    workload: Workload
    restart: bool  # False: a step would wait for it, not restart it
    reads: tuple[str, ...]  # the changed ConfigMaps it reads

    def as_dict(self) -> dict[str, object]:
        w = self.workload
        action = "restart" if self.restart else "wait"
        return {
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


def source_preview(source: Source) -> Preview:
    """The branch tip, its plan against the cluster, and the workloads the change would reach."""
    revision, _ = revision_fetch(source)
    desired = (
        None if revision.outcome == Revision.Outcome.REJECTED else revision_desired_state(source, revision)
    )
    if desired is None:
        revision.refresh_from_db()
        return Preview(revision, None)
    live = live_configmaps(
        get_cluster(), {*desired.namespaces, *in_scope(source, managed_namespaces(source))}
    )
    planned = plan(desired, live, source=source.name, commit=revision.commit, managed=managed_keys(source))
    mode = desired.policy.rollout.consumers
    return Preview(
        revision, planned, _consumer_effects(source, planned, mode) if mode != ConsumerMode.IGNORE else ()
    )


def _consumer_effects(source: Source, planned: Plan, mode: ConsumerMode) -> tuple[ConsumerEffect, ...]:
    changed = {item.key: item.after_hash for item in planned.actionable}
    if not changed:
        return ()
    hashes = {
        (namespace, name): content_hash
        for namespace, name, content_hash in ManagedObject.objects.filter(source=source).values_list(
            "namespace", "name", "content_hash"
        )
    }
    hashes.update({key: value for key, value in changed.items() if value})
    effects = []
    for workload in wave_consumers(get_cluster(), changed):
        managed = {name: h for (namespace, name), h in hashes.items() if namespace == workload.namespace}
        wanted = consumed_hash(workload, managed)
        restart = mode == ConsumerMode.RESTART and workload.restartable and wanted != workload.config_hash
        reads = tuple(
            sorted(
                name
                for namespace, name in changed
                if namespace == workload.namespace and name in workload.consumes
            )
        )
        effects.append(ConsumerEffect(workload, restart, reads))
    return tuple(effects)
