"""The workloads a step's ConfigMaps reach: find them, restart those whose content changed, and undo it.

A restart is a server-side apply of two annotations on the workload's pod
template (``sluice.dev/config-hash`` and ``sluice.dev/commit``), written as an
intent like any change, so the same content never restarts a workload twice
and a crash between a ConfigMap and its restart is finished by the next pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gitops.cluster import Cluster, ReadForbidden
from gitops.consumers.workloads import (
    CONFIG_HASH_ANNOTATION,
    KINDS,
    Workload,
    consumed_hash,
    referring_rollouts_read,
    restart_due,
    stamp,
    workload_from,
)
from gitops.models import ApplyIntent, Rollout
from gitops.plan.provenance import COMMIT_PATTERN, CONTENT_HASH_PATTERN
from gitops.vocabulary import ChangeAction

ConfigMapKey = tuple[str, str]  # (namespace, name), in one cluster
ClusterConfigMapKey = tuple[str, str, str]  # (cluster, namespace, name)


def consumers_forbidden(cluster: str, refusal: ReadForbidden) -> str:
    """Why a step fails in a cluster whose RBAC does not let Sluice list the workloads of a namespace it
    changed: it can neither restart nor gate them. The step's failure and a preview's warning say it."""
    return (
        f"cluster {cluster}: may not list the consumers of its changed ConfigMaps ({refusal}); grant "
        "get, list, watch and patch on deployments, statefulsets and daemonsets (and Argo Rollouts' "
        "rollouts where it is installed) in its namespaces "
        "(deploy/render.py member-rbac), or set rollout.consumers to ignore"
    )


def wave_consumers(cluster: Cluster, changed: Iterable[ConfigMapKey]) -> list[Workload]:
    """The Deployments, StatefulSets, DaemonSets and Rollouts of ``cluster`` that read a ``changed``
    ConfigMap."""
    names_by_namespace: dict[str, set[str]] = {}
    for namespace, name in changed:
        names_by_namespace.setdefault(namespace, set()).add(name)
    found: list[Workload] = []
    for namespace, names in sorted(names_by_namespace.items()):
        listed = [
            workload_from(item, cluster.name)
            for kind in KINDS
            for item in cluster.list_workloads(kind, namespace)[0]
        ]
        found.extend(w for w in referring_rollouts_read(listed) if w.consumes & names)
    return sorted(found, key=lambda workload: workload.key)


def consumer_map_key(cluster: str, namespace: str, kind: str, name: str, *, default_cluster: str) -> str:
    """``namespace/Kind/name`` in the default cluster, ``cluster/namespace/Kind/name`` in another."""
    key = f"{namespace}/{kind}/{name}"
    return key if cluster == default_cluster else f"{cluster}/{key}"


def consumer_map(
    cluster: Cluster, managed: Iterable[ConfigMapKey], *, default_cluster: str
) -> dict[str, list[str]]:
    """Which workload of ``cluster`` reads which of the source's ConfigMaps there (``consumer_map_key``).
    A kind of workload Sluice may not read in a namespace is left out, not the others with it."""
    names_by_namespace: dict[str, set[str]] = {}
    for namespace, name in managed:
        names_by_namespace.setdefault(namespace, set()).add(name)
    result: dict[str, list[str]] = {}
    for namespace, names in sorted(names_by_namespace.items()):
        result.update(_namespace_consumers(cluster, namespace, names, default_cluster=default_cluster))
    return result


def _namespace_consumers(
    cluster: Cluster, namespace: str, names: set[str], *, default_cluster: str
) -> dict[str, list[str]]:
    listed: list[Workload] = []
    for kind in KINDS:
        try:
            listed.extend(map(workload_from, cluster.list_workloads(kind, namespace)[0]))
        except ReadForbidden:
            continue
    result: dict[str, list[str]] = {}
    for workload in referring_rollouts_read(listed):
        if read := sorted(workload.consumes & names):
            key = consumer_map_key(
                cluster.name, namespace, workload.kind, workload.name, default_cluster=default_cluster
            )
            result[key] = read
    return result


def restart_intents(
    rollout: Rollout,
    workloads: Iterable[Workload],
    hashes: Mapping[ClusterConfigMapKey, str],
    *,
    step_index: int,
    weight: int,
    actor: str,
) -> list[ApplyIntent]:
    """A restart for each workload whose stamp differs from what it consumes now; none when it is current.

    ``hashes`` holds the content hash of every ConfigMap of the source, as the step leaves it.
    """
    commit = rollout.revision.commit
    intents = []
    for workload in workloads:
        managed = {
            name: h
            for (cluster, namespace, name), h in hashes.items()
            if (cluster, namespace) == (workload.cluster, workload.namespace)
        }
        wanted = consumed_hash(workload, managed)
        if not restart_due(workload, wanted):
            continue
        before = {"configHash": workload.config_hash, "commit": workload.commit}
        after = {"configHash": wanted, "commit": commit}
        position = (step_index, weight, actor)
        restart = ChangeAction.RESTART
        intents.append(
            _workload_intent(rollout, workload, restart, before=before, after=after, position=position)
        )
    return intents


def restoring_intent(
    rollout: Rollout, first: ApplyIntent, live: Mapping[str, Any] | None, *, actor: str
) -> ApplyIntent | None:
    """Stamps a restarted workload back to what it carried before ``first`` restarted it.

    None when it is gone or already carries that stamp; an empty stamp removes the
    annotations, so the pod template is exactly what it was before Sluice.
    """
    if live is None:
        return None
    workload = workload_from(live, first.cluster)
    before = first.before or {}
    if workload.config_hash == before.get("configHash", "") and workload.commit == before.get("commit", ""):
        return None
    current = {"configHash": workload.config_hash, "commit": workload.commit}
    position = (rollout.step_index, rollout.weight, actor)
    return _workload_intent(
        rollout, workload, ChangeAction.ROLLBACK, before=current, after=dict(before), position=position
    )


def _workload_intent(
    rollout: Rollout,
    workload: Workload,
    action: ChangeAction,
    *,
    before: Mapping[str, str],
    after: Mapping[str, str],
    position: tuple[int, int, str],
) -> ApplyIntent:
    """``position``: the step index, weight and actor the intent is recorded with."""
    step_index, weight, actor = position
    old, new = before.get("configHash", ""), after.get("configHash", "")
    change = {"op": "change", "field": "podTemplate", "key": CONFIG_HASH_ANNOTATION, "old": old, "new": new}
    # A workload's stamp is the cluster's text, which anybody may have written: the manifest restores
    # it exactly, while the columns keep only a commit and hashes as Sluice writes them.
    restored_commit = after.get("commit", "")
    return ApplyIntent(
        rollout=rollout,
        source_id=rollout.source_id,
        step_index=step_index,
        weight=weight,
        cluster=workload.cluster,
        namespace=workload.namespace,
        name=workload.name,
        kind=workload.kind,
        action=action,
        commit=restored_commit if COMMIT_PATTERN.fullmatch(restored_commit) else rollout.revision.commit,
        manifest=stamp(workload, config_hash_value=new, commit=restored_commit),
        before=dict(before),
        after=dict(after),
        before_hash=_hash_column(old),
        after_hash=_hash_column(new),
        diff=[change],
        force=True,
        actor=actor,
    )


def _hash_column(config_hash: str) -> str:
    """A stamp's hash for the intent's columns: "" for text Sluice did not write (the diff shows it)."""
    return config_hash if CONTENT_HASH_PATTERN.fullmatch(config_hash) else ""
