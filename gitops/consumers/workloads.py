"""Deployments, StatefulSets, DaemonSets and Argo Rollouts as values: what they consume and how healthy
they are. Pure.

A workload *consumes* a ConfigMap when its pod template refers to it through
``env[].valueFrom.configMapKeyRef``, ``envFrom[].configMapRef``,
``volumes[].configMap`` or ``volumes[].projected.sources[].configMap``, in a
container or an init container; or when the workload names it in its
``sluice.dev/consumes`` annotation (or Reloader's
``configmap.reloader.stakater.com/reload``): an application that reads its
ConfigMap through the API, which no pod template shows.

*Healthy* means the workload's own controller has finished rolling out its
current pod template, judged the way ``kubectl rollout status`` judges it; a
Rollout as Argo CD judges one, by the phase its controller reports.

An Argo ``Rollout`` with a pod template of its own is restarted as a Deployment is,
by a stamp on that template: its controller then runs the Rollout's own strategy
(canary or blue-green steps, analysis) inside Sluice's wave, and Sluice's gate
waits for its phase to be ``Healthy``. A Rollout that refers to a Deployment
(``spec.workloadRef``) has no template: the Deployment is stamped, and the
Rollout, which reads what the Deployment reads (``referring_rollouts_read``), is
waited for until Argo has taken in the Deployment's newest generation and reports
it ``Healthy``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from gitops.desired.content import Content
from gitops.numerals import whole_number
from gitops.storable import storable_text

CONFIG_HASH_ANNOTATION = "sluice.dev/config-hash"
COMMIT_ANNOTATION = "sluice.dev/commit"
RESTART_ANNOTATION = "sluice.dev/restart"
# ConfigMaps a workload reads without its pod template referring to them, comma-separated; Reloader's
# annotation says the same, so a workload Reloader restarted is found without a second annotation.
CONSUMES_ANNOTATION = "sluice.dev/consumes"
RELOADER_RELOAD_ANNOTATION = "configmap.reloader.stakater.com/reload"
# A ConfigMap's name: a DNS subdomain (at most 253 characters). Anything else in the annotation names no
# ConfigMap (Reloader's regular expressions among them: never compiled here), and is skipped.
_CONFIGMAP_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_CONFIGMAP_NAME_LENGTH = 253
# Names read from one annotation: anybody who may edit a workload writes it.
MAX_DECLARED_CONFIGMAPS = 100
ROLLOUT = "Rollout"
# Where Argo Rollouts records the generation of the Deployment a Rollout refers to that it has read.
WORKLOAD_GENERATION_ANNOTATION = "rollout.argoproj.io/workload-generation"
# The condition Argo Rollouts sets on a Rollout whose spec (or what it refers to) it cannot run.
INVALID_SPEC = "InvalidSpec"
KINDS = ("Deployment", "StatefulSet", "DaemonSet", ROLLOUT)
API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    ROLLOUT: "argoproj.io/v1alpha1",
}
# How much of a condition's message a workload's health keeps.
MESSAGE_LENGTH = 500


class Health(StrEnum):
    HEALTHY = "healthy"
    PROGRESSING = "progressing"
    FAILED = "failed"


@dataclass(frozen=True)
class WorkloadHealth:
    health: Health
    detail: str  # "3/3 available", "updating 1/2", "ProgressDeadlineExceeded: ..."


@dataclass(frozen=True)
class Workload:
    kind: str
    namespace: str
    name: str
    consumes: frozenset[str]  # names of ConfigMaps in its namespace
    config_hash: str  # the stamp on its pod template, "" when never stamped
    commit: str  # the commit of that stamp
    restartable: bool  # False when annotated sluice.dev/restart: "false", or a Rollout that refers to one
    cluster: str = ""  # the cluster it runs in
    refers_to: str = ""  # a Rollout's spec.workloadRef: the Deployment whose template its pods run

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def cluster_key(self) -> tuple[str, str, str, str]:
        return (self.cluster, self.kind, self.namespace, self.name)

    @property
    def label(self) -> str:
        return f"{self.kind.lower()}/{self.name}"


def workload_from(obj: Mapping[str, Any], cluster: str = "") -> Workload:
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if obj.get("kind") == ROLLOUT and spec.get("workloadRef"):
        # Its pods run the referred Deployment's template, which is the one stamped: a stamp here would
        # give it a template beside the reference, which Argo refuses. It reads what that Deployment
        # reads (``referring_rollouts_read``) and is only waited for.
        return Workload(
            kind=ROLLOUT,
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            consumes=frozenset(),
            config_hash="",
            commit="",
            restartable=False,
            cluster=cluster,
            refers_to=referred_deployment(obj),
        )
    template = spec.get("template") or {}
    template_annotations = (template.get("metadata") or {}).get("annotations") or {}
    annotations = metadata.get("annotations") or {}
    restart = str(annotations.get(RESTART_ANNOTATION, "true")).strip().lower()
    return Workload(
        kind=str(obj.get("kind", "")),
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        consumes=configmaps_referenced(template.get("spec") or {})
        | configmaps_declared(annotations, (template.get("metadata") or {}).get("annotations") or {}),
        config_hash=str(template_annotations.get(CONFIG_HASH_ANNOTATION, "")),
        commit=str(template_annotations.get(COMMIT_ANNOTATION, "")),
        restartable=restart != "false",
        cluster=cluster,
    )


def referred_deployment(obj: Mapping[str, Any]) -> str:
    """The Deployment a Rollout's ``spec.workloadRef`` names, "" for any other workload."""
    reference = (obj.get("spec") or {}).get("workloadRef")
    if (
        obj.get("kind") != ROLLOUT
        or not isinstance(reference, Mapping)
        or reference.get("kind") != "Deployment"
    ):
        return ""
    return str(reference.get("name", ""))


def referring_rollouts_read(workloads: Iterable[Workload]) -> list[Workload]:
    """``workloads`` (of one listing), each Rollout that refers to a Deployment among them reading what
    that Deployment reads."""
    listed = list(workloads)
    reads = {(w.cluster, w.namespace, w.name): w.consumes for w in listed if w.kind == "Deployment"}
    return [
        replace(w, consumes=reads.get((w.cluster, w.namespace, w.refers_to), frozenset()))
        if w.refers_to
        else w
        for w in listed
    ]


def configmaps_referenced(pod_spec: Mapping[str, Any]) -> frozenset[str]:
    """Every ConfigMap a pod spec reads, by name: env, envFrom, volumes and projected volumes."""
    return frozenset(name for name in _references(pod_spec) if isinstance(name, str) and name)


def configmaps_declared(
    annotations: Mapping[str, Any], template_annotations: Mapping[str, Any] | None = None
) -> frozenset[str]:
    """The ConfigMaps a workload's annotations say it reads (``sluice.dev/consumes``, Reloader's
    ``configmap.reloader.stakater.com/reload``): names separated by commas, the first 100 entries of
    each. Reloader's is read from the pod template's annotations too when the workload has none, as
    Reloader reads it."""
    names: set[str] = set()
    for annotation in (CONSUMES_ANNOTATION, RELOADER_RELOAD_ANNOTATION):
        value = annotations.get(annotation)
        if value is None and annotation == RELOADER_RELOAD_ANNOTATION:
            value = (template_annotations or {}).get(annotation)
        if isinstance(value, str):
            listed = (
                name.strip() for name in value.split(",", MAX_DECLARED_CONFIGMAPS)[:MAX_DECLARED_CONFIGMAPS]
            )
            names.update(
                name
                for name in listed
                if len(name) <= _CONFIGMAP_NAME_LENGTH and _CONFIGMAP_NAME.fullmatch(name)
            )
    return frozenset(names)


def _references(pod_spec: Mapping[str, Any]) -> Iterator[Any]:
    for container in (*(pod_spec.get("containers") or ()), *(pod_spec.get("initContainers") or ())):
        for variable in container.get("env") or ():
            yield ((variable.get("valueFrom") or {}).get("configMapKeyRef") or {}).get("name")
        for source in container.get("envFrom") or ():
            yield (source.get("configMapRef") or {}).get("name")
    for volume in pod_spec.get("volumes") or ():
        yield (volume.get("configMap") or {}).get("name")
        for projected in (volume.get("projected") or {}).get("sources") or ():
            yield (projected.get("configMap") or {}).get("name")


def config_hash(contents: Mapping[str, str]) -> str:
    """One hash over the content hashes of the ConfigMaps a workload consumes (name -> content hash)."""
    canonical = json.dumps(sorted(contents.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def pods_read_the_change(before: Content | None, after: Content | None) -> bool:
    """Whether a ConfigMap's change reaches what pods read of it (env, envFrom and volumes): its data or
    binaryData, or the ConfigMap came or went. Labels, annotations or ``immutable`` alone reach nobody,
    as Reloader's hash covers only these two too."""
    if before is None or after is None:
        return True
    return before.data != after.data or before.binary_data != after.binary_data


def consumed_hash(workload: Workload, managed: Mapping[str, str]) -> str:
    """The stamp a workload should carry: over the managed ConfigMaps it reads (name -> content hash)."""
    consumed = {name: managed[name] for name in workload.consumes if name in managed}
    return config_hash(consumed) if consumed else ""


def restart_due(workload: Workload, wanted: str) -> bool:
    """Whether a step restarts ``workload``, which should carry the stamp ``wanted`` (``consumed_hash``):
    one that reads no managed ConfigMap any more keeps its pods. The step and the preview both ask here."""
    return workload.restartable and bool(wanted) and wanted != workload.config_hash


def stamp(workload: Workload, *, config_hash_value: str, commit: str) -> dict[str, Any]:
    """The server-side apply body that stamps a pod template, and nothing else.

    Applied as field manager ``sluice``, it owns just these two annotations, so
    applying it again changes nothing, and applying it without them (an empty
    hash) releases and removes them: the template is what it was before Sluice.
    """
    annotations = (
        {CONFIG_HASH_ANNOTATION: config_hash_value, COMMIT_ANNOTATION: commit} if config_hash_value else {}
    )
    template_metadata: dict[str, Any] = {"annotations": annotations} if annotations else {}
    return {
        "apiVersion": API_VERSIONS[workload.kind],
        "kind": workload.kind,
        "metadata": {"name": workload.name, "namespace": workload.namespace},
        "spec": {"template": {"metadata": template_metadata}},
    }


def health_of(obj: Mapping[str, Any], referred_generation: int | None = None) -> WorkloadHealth:
    """``referred_generation``: for a Rollout that refers to a Deployment, that Deployment's generation
    as last seen (None: not seen yet)."""
    kind = obj.get("kind")
    if kind == "Deployment":
        return _deployment_health(obj)
    if kind == "StatefulSet":
        return _statefulset_health(obj)
    if kind == "DaemonSet":
        return _daemonset_health(obj)
    if kind == ROLLOUT:
        return (
            _invalid_rollout_health(obj)
            or _referring_rollout_health(obj, referred_generation)
            or _rollout_health(obj)
        )
    return WorkloadHealth(Health.FAILED, f"unknown kind {kind!r}")


def _replicas(spec: Mapping[str, Any]) -> int:
    """``spec.replicas``; absent or null (a Rollout's schema allows it) is one, as controllers take it."""
    value = spec.get("replicas")
    return 1 if value is None else int(value)


def _observed(obj: Mapping[str, Any]) -> bool:
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    # A Rollout's observedGeneration is a string ("3"); apps/v1's an integer. Before Argo Rollouts
    # v0.10 it was a hash, which says nothing of generations: taken as observed, as Argo CD takes it.
    text = str((obj.get("status") or {}).get("observedGeneration") or "")
    observed = whole_number(text) if text else 0
    return observed is None or observed >= generation


def _deployment_health(obj: Mapping[str, Any]) -> WorkloadHealth:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    wanted = _replicas(spec)
    if not _observed(obj):
        # A condition from before the newest template (a deadline missed earlier) says nothing about it.
        return WorkloadHealth(Health.PROGRESSING, f"updating 0/{wanted}")
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            # The message is the cluster's text, kept in the rollout's states and shown on pages.
            message = storable_text(str(condition.get("message", "")))[:MESSAGE_LENGTH]
            detail = f"ProgressDeadlineExceeded: {message}".strip()
            return WorkloadHealth(Health.FAILED, detail)
    updated, available = int(status.get("updatedReplicas") or 0), int(status.get("availableReplicas") or 0)
    if updated == available == int(status.get("replicas") or 0) == wanted:
        # Paused or not: every pod runs the newest template (one Sluice left alone, watched or pinned,
        # was never healthy while paused, and its wave timed out and rolled back).
        return WorkloadHealth(Health.HEALTHY, f"{available}/{wanted} available")
    if spec.get("paused"):
        # A paused Deployment makes no new ReplicaSet: it waits for whoever paused it, and says so.
        return WorkloadHealth(
            Health.PROGRESSING, f"paused (spec.paused): updating {min(updated, available)}/{wanted}"
        )
    return WorkloadHealth(Health.PROGRESSING, f"updating {min(updated, available)}/{wanted}")


def _statefulset_health(obj: Mapping[str, Any]) -> WorkloadHealth:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    wanted = _replicas(spec)
    ready, updated = int(status.get("readyReplicas") or 0), int(status.get("updatedReplicas") or 0)
    strategy = spec.get("updateStrategy") or {}
    partition = int((strategy.get("rollingUpdate") or {}).get("partition") or 0)
    if not _observed(obj):
        return WorkloadHealth(Health.PROGRESSING, f"updating 0/{wanted}")
    if strategy.get("type") == "OnDelete":
        # Its pods change only when someone deletes them: ready is all that can be asked.
        done = ready == wanted
    elif partition:
        done = ready == wanted and updated >= wanted - partition
    else:
        done = ready == wanted and status.get("currentRevision") == status.get("updateRevision")
    if done:
        return WorkloadHealth(Health.HEALTHY, f"{ready}/{wanted} ready")
    return WorkloadHealth(Health.PROGRESSING, f"updating {min(updated, ready)}/{wanted}")


def _daemonset_health(obj: Mapping[str, Any]) -> WorkloadHealth:
    status = obj.get("status") or {}
    wanted = int(status.get("desiredNumberScheduled") or 0)
    updated, available = (
        int(status.get("updatedNumberScheduled") or 0),
        int(status.get("numberAvailable") or 0),
    )
    if not _observed(obj):
        return WorkloadHealth(Health.PROGRESSING, f"updating 0/{wanted}")
    on_delete = ((obj.get("spec") or {}).get("updateStrategy") or {}).get("type") == "OnDelete"
    # OnDelete: its pods change only when someone deletes them (node agents, CNI), as a StatefulSet's.
    if available == wanted and (on_delete or updated == wanted):
        return WorkloadHealth(Health.HEALTHY, f"{available}/{wanted} available")
    return WorkloadHealth(Health.PROGRESSING, f"updating {min(updated, available)}/{wanted}")


class RolloutPhase(StrEnum):
    """What Argo Rollouts' controller reports in ``status.phase`` (v1.0 and later)."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    DEGRADED = "Degraded"


def _invalid_rollout_health(obj: Mapping[str, Any]) -> WorkloadHealth | None:
    """Failed when Argo Rollouts holds the Rollout's newest spec invalid (its ``InvalidSpec`` condition);
    None otherwise.

    Argo then rolls out nothing, and takes in no generation of a Deployment the Rollout refers to: the
    wave would wait for its ``healthTimeout``. The condition is read only for the generation Argo
    reported (it writes the two together): one of an older spec, since mended, decides nothing.
    """
    if not _observed(obj):
        return None
    for condition in (obj.get("status") or {}).get("conditions") or ():
        if not isinstance(condition, Mapping) or condition.get("type") != INVALID_SPEC:
            continue
        if condition.get("status") == "True":
            message = storable_text(str(condition.get("message", "")))[:MESSAGE_LENGTH]
            return WorkloadHealth(Health.FAILED, f"{INVALID_SPEC}: {message}".strip())
    return None


def _referring_rollout_health(
    obj: Mapping[str, Any], referred_generation: int | None
) -> WorkloadHealth | None:
    """Progressing while a Rollout that refers to a Deployment has not taken in the Deployment's
    generation (``referred_generation``) yet; None once it has, or when it refers to none.

    Argo copies the generation it last read of the Deployment into an annotation, and reports its phase
    for it in ``status.workloadObservedGeneration``: right after a stamp both still name the older
    template, whose phase is Healthy.
    """
    if not (obj.get("spec") or {}).get("workloadRef"):
        return None
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    seen = whole_number(str(annotations.get(WORKLOAD_GENERATION_ANNOTATION, "")))
    reported = whole_number(str((obj.get("status") or {}).get("workloadObservedGeneration") or ""))
    if referred_generation is None or seen is None or seen < referred_generation or reported != seen:
        wanted = "" if referred_generation is None else f" {referred_generation}"
        return WorkloadHealth(
            Health.PROGRESSING, f"waiting for Argo Rollouts to take in its Deployment's generation{wanted}"
        )
    return None


def _rollout_health(obj: Mapping[str, Any]) -> WorkloadHealth:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    wanted = _replicas(spec)
    updated, available = int(status.get("updatedReplicas") or 0), int(status.get("availableReplicas") or 0)
    if not status or not _observed(obj):
        # Until its controller has seen the newest template, the phase is the previous template's.
        return WorkloadHealth(Health.PROGRESSING, f"updating 0/{wanted}")
    phase = status.get("phase")
    message = storable_text(str(status.get("message", "")))[:MESSAGE_LENGTH]
    if phase == RolloutPhase.DEGRADED or status.get("abort"):
        # Aborted, a failed analysis, a missed progress deadline: Argo rolls its pods back, and Sluice
        # rolls back the wave that restarted it.
        return WorkloadHealth(Health.FAILED, f"Degraded: {message}".strip())
    if phase == RolloutPhase.HEALTHY:
        return WorkloadHealth(Health.HEALTHY, f"{available}/{wanted} available")
    if phase == RolloutPhase.PAUSED:
        # A pause step of its own strategy: it goes on when someone promotes it (kubectl argo rollouts
        # promote) or its duration ends, within the wave's healthTimeout.
        return WorkloadHealth(Health.PROGRESSING, f"paused (Argo Rollouts): {message}".strip())
    if phase is None:
        return WorkloadHealth(Health.PROGRESSING, "waiting for Argo Rollouts to report a phase")
    return WorkloadHealth(Health.PROGRESSING, f"updating {min(updated, available)}/{wanted}")


def consumers_of(workloads: Iterable[Workload], configmaps: Iterable[str]) -> list[Workload]:
    """The workloads that read any of ``configmaps`` (names in the workloads' namespace)."""
    wanted = frozenset(configmaps)
    return sorted((w for w in workloads if w.consumes & wanted), key=lambda w: w.key)


def restart_holds(live: Mapping[str, Any] | None, cluster: str, after: Mapping[str, Any] | None) -> bool:
    """Whether the workload carries the stamp a restart writes (``after``: its config hash and commit):
    the restart took effect."""
    if live is None or after is None:
        return False
    workload = workload_from(live, cluster)
    return (workload.config_hash, workload.commit) == (after.get("configHash", ""), after.get("commit", ""))
