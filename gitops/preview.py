"""What a sync would do, without doing it: fetch, validate and plan; nothing is applied or recorded.

Besides the ConfigMaps, a preview names the workloads the change reaches: those
a step would restart (``consumers: restart``) or wait for (``watch``, or a
workload pinned with ``sluice.dev/restart: "false"``).

``source_preview`` plans the followed branch's tip (``gitops diff NAME``). ``revision_preview`` plans
any revision the remote has, a pull request's head say (``gitops diff NAME --revision REF``, the
dashboard's "Preview a revision", the API's ``revision`` parameter): it writes nothing at all, not
even a Revision row, and leaves the followed branch where it was.

``source_preview`` records what it fetches and finds as a pass's fetch does (the branch's ref in the
mirror, the revision's row and its outcome, the source's last commit and target clusters, a
rejection's notification), and only under the source's reconcile lock, taken when nobody holds it: a
preview never waits for a pass, and never writes beside one, over what the pass wrote. While a pass
holds the source (or asks for it while the preview's fetch runs), the tip is previewed as any revision
is, recording nothing: the pass records it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from django.utils import timezone

from gitops import schedule
from gitops.cluster import ReadForbidden, clients, get_cluster
from gitops.consumers.wave import consumers_forbidden, wave_consumers
from gitops.consumers.workloads import Workload, consumed_hash, pods_read_the_change, restart_due
from gitops.desired.errors import ValidationError
from gitops.desired.policy import ConsumerMode
from gitops.desired.revision import DesiredState
from gitops.errors import GitopsError, TemporaryError
from gitops.failpoints import failpoint
from gitops.fetch.git import normalize_branch
from gitops.fetch.mirror import CommitInfo, FetchInterrupted
from gitops.fetch.refs import (
    InvalidRevision,
    RequestedRevision,
    RevisionKind,
    RevisionNotFound,
    parse_revision,
)
from gitops.fetch.revisions import revision_desired_state, revision_fetch, revision_load
from gitops.locks import source_lock_if_free
from gitops.logs import log_context
from gitops.models import ManagedObject, Revision, Source
from gitops.plan import Action, Plan, plan
from gitops.plan.shown import items_shown
from gitops.record.inventory import managed_keys
from gitops.redaction import redact, redact_url
from gitops.rollout.state import clusters_owed_rollback, clusters_with_pending_writes
from gitops.rollout.step import live_state
from gitops.vocabulary import PreviewOutcome

log = logging.getLogger("gitops.preview")


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
    consumer_problems: tuple[str, ...] = ()  # clusters whose consumers a step may not list: it would fail


def source_preview(source: Source, *, cluster: str | None = None) -> Preview:
    """The branch tip, its plan against the clusters, and the workloads the change would reach.

    ``cluster`` keeps only that cluster's part of the plan. A cluster that does not
    answer shows its objects as ``unreachable``.
    """
    tip = _tip_recorded(source)
    revision, desired = tip if tip is not None else _tip_unrecorded(source)
    if desired is None:
        return Preview(revision, None)
    planned, reached = _plan_against_clusters(source, desired, revision.commit, cluster=cluster)
    return Preview(revision, planned, reached.effects, reached.problems)


def _tip_recorded(source: Source) -> tuple[Revision, DesiredState | None] | None:
    """The tip fetched, recorded and validated as a pass does it, under the source's lock; None, with
    nothing recorded, when a pass holds the lock or asks for it while Git answers.

    Without the lock, what a preview validated beside a pass could land over what the pass wrote: REJECTED
    over its VALID or APPLIED, or VALID over its REJECTED (each validated under a scope, a registry or
    other sources' flag keys read at another moment), the target clusters of the commit it fetched over
    those of a later one, and the source's last commit and the mirror's branch moved back by a fetch that
    ended after the pass's; a rejection could be announced twice, and either fetch, stopped at its
    timeout, could sweep the other's files. The lock is only tried: a preview never waits for a pass.
    """
    held = False
    try:
        with source_lock_if_free(source) as held:
            if not held:
                return None
            try:
                revision, _ = revision_fetch(source, interrupted=_pass_waiting(source))
            except FetchInterrupted:
                return None  # the pass fetches the tip itself, and records it
            # Validated as the next sync validates it, a rejected one too: an administrator may have
            # widened the scope since (or added the cluster it names), and then the sync applies it. (A
            # rejection stored was shown as it stood: `gitops diff` said "rejected" for a commit the
            # next poll applied.)
            desired = revision_desired_state(source, revision)
            if desired is None:
                revision.refresh_from_db()
            return revision, desired
    finally:
        if held:  # a push or a poll meanwhile found the source held and left only a request
            schedule.syncs_requested_meanwhile([source.pk])


def _pass_waiting(source: Source) -> Callable[[], bool]:
    """Whether a pass asked for the source since the preview took its lock: a pass that finds the source
    held leaves a request (``sync_requested_at``, a new time each). The preview's fetch stops for it, as
    a pass's own fetch stops for an abort: a Git host that hangs would hold the pass for the whole fetch."""
    requests = Source.all_objects.filter(pk=source.pk).values_list("sync_requested_at", flat=True)
    before = requests.first()
    return lambda: requests.first() != before


def _tip_unrecorded(source: Source) -> tuple[Revision, DesiredState | None]:
    """The tip, fetched into a preview's own ref and validated as a sync validates it, recording nothing
    (``revision_load``). The revision is shown with what this validation found, in a row never saved: the
    stored one is the pass's to write."""
    branch = RequestedRevision(f"refs/heads/{normalize_branch(source.branch)}", RevisionKind.BRANCH)
    loaded = revision_load(source, branch)
    info = loaded.info
    revision = Revision(
        source=source,
        commit=info.sha,
        author_name=info.author_name,
        author_email=info.author_email,
        message=info.message,
        committed_at=info.committed_at,
        outcome=Revision.Outcome.VALID if loaded.desired is not None else Revision.Outcome.REJECTED,
        errors=[error.as_dict() for error in loaded.errors],
    )
    return revision, loaded.desired


@dataclass(frozen=True)
class _Reached:
    """The workloads a change reaches, and why a step could not find them in some clusters."""

    effects: tuple[ConsumerEffect, ...] = ()
    problems: tuple[str, ...] = ()


def _plan_against_clusters(
    source: Source, desired: DesiredState, commit: str, *, cluster: str | None = None
) -> tuple[Plan, _Reached]:
    """The plan of ``desired`` against the live clusters, and the workloads it would reach. Reads only."""
    # The registry as it is now (one query): this process's last read may be old, and a cluster removed
    # and registered again since, at another server, was planned against the old one.
    clients.refresh()
    managed = managed_keys(source)
    # The live cache's stamps vouch for a preview as they do for a sync: it reads only the rest. A cluster
    # a pass leaves alone (a rollback owed there, or writes left pending) is shown left alone, with why;
    # shown only, never the preview's failure: a pass applying now has its batch pending too.
    deferred = dict(clusters_owed_rollback(source.pk))
    for pending, why in clusters_with_pending_writes(source.pk).items():
        deferred.setdefault(pending, str(why))
    live = live_state(source, desired, managed=managed, deferred=deferred)
    planned = plan(
        desired,
        live.objects,
        source=source.name,
        commit=commit,
        managed=managed,
        unreachable=live.reasons(),
        settled=live.settled,
    )
    if cluster is not None:
        planned = replace(planned, items=tuple(item for item in planned.items if item.cluster == cluster))
    mode = desired.policy.rollout.consumers
    return planned, _consumer_effects(source, planned, mode) if mode != ConsumerMode.IGNORE else _Reached()


def _consumer_effects(source: Source, planned: Plan, mode: ConsumerMode) -> _Reached:
    # As a step finds them: only a change of what pods read of a ConfigMap reaches its consumers.
    changed = {
        item.key: item.after_hash
        for item in planned.actionable
        if pods_read_the_change(item.before, item.after)
    }
    if not changed:
        return _Reached()
    hashes = {
        (cluster, namespace, name): content_hash
        for cluster, namespace, name, content_hash in ManagedObject.objects.filter(source=source).values_list(
            "cluster", "namespace", "name", "content_hash"
        )
    }
    for key, value in changed.items():  # a deleted one leaves the inventory, as after a step
        if value:
            hashes[key] = value
        else:
            hashes.pop(key, None)
    by_cluster: dict[str, set[tuple[str, str]]] = {}
    for cluster, namespace, name in changed:
        by_cluster.setdefault(cluster, set()).add((namespace, name))
    effects, problems = [], []
    for cluster, keys in sorted(by_cluster.items()):
        try:
            workloads = wave_consumers(get_cluster(cluster), keys)
        except ReadForbidden as exc:  # the step would fail there, and roll back: said before it does
            # The refusal is the apiserver's (or an authorizer's) text: shown to viewers as a step's is.
            problems.append(redact(f"a step fails and rolls back in {consumers_forbidden(cluster, exc)}"))
            continue
        except GitopsError:
            continue  # an unreachable cluster's objects are shown as such in the plan
        for workload in workloads:
            place = (cluster, workload.namespace)
            managed = {name: h for (c, ns, name), h in hashes.items() if (c, ns) == place}
            wanted = consumed_hash(workload, managed)
            restart = mode == ConsumerMode.RESTART and restart_due(workload, wanted)
            reads = tuple(
                sorted(name for ns, name in keys if ns == workload.namespace and name in workload.consumes)
            )
            effects.append(ConsumerEffect(workload, restart, reads))
    return _Reached(tuple(effects), tuple(problems))


# -- any revision -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevisionPreview:
    source: str
    revision: str  # as asked: a ref or a commit id
    outcome: PreviewOutcome
    detail: str = ""  # why, when it was not planned
    info: CommitInfo | None = None
    plan: Plan | None = None
    errors: tuple[ValidationError, ...] = ()
    consumers: tuple[ConsumerEffect, ...] = ()
    consumer_problems: tuple[str, ...] = ()

    def as_dict(self, *, bounded: bool = False) -> dict[str, Any]:
        """Plain data (the API's plan, ``gitops diff --revision --json``, a task's result): the objects
        that would change (``items``), by action in ``summary``. ``bounded``: the first of them, their
        diffs while they fit (``gitops.plan.shown``), as a task's result that crosses the broker."""
        changed = [
            item for item in (self.plan.items if self.plan else ()) if item.action is not Action.UNCHANGED
        ]
        info = self.info
        return {
            "source": self.source,
            "revision": self.revision,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "commit": info.sha if info else "",
            "author_name": info.author_name if info else "",
            "author_email": info.author_email if info else "",
            "message": info.message.splitlines()[0] if info and info.message else "",
            "committed_at": info.committed_at.isoformat() if info else None,
            "computed_at": timezone.now().isoformat(),
            "weight": 100,
            # They may quote what the revision holds (a token in a label): pages, the API and `gitops diff
            # --revision --json` show them redacted, as a source's errors are.
            "errors": [{**error.as_dict(), "message": redact(error.message)} for error in self.errors],
            "summary": self.plan.summary() if self.plan else {},
            "items_total": len(changed),
            "items": items_shown(changed) if bounded else [item.as_dict() for item in changed],
            "consumers": [effect.as_dict() for effect in self.consumers],
            "consumer_problems": list(self.consumer_problems),
        }


def revision_preview(source: Source, revision: str, *, cluster: str | None = None) -> RevisionPreview:
    """Plans any revision the source's remote has against the clusters as they are now; applies nothing.
    ``cluster`` keeps only that cluster's part of the plan (``gitops diff --revision REF --cluster C``).

    Raises InvalidRevision (nothing fetched), RevisionNotFound, or what a fetch or the cluster raises.
    """
    requested = parse_revision(revision)
    loaded = revision_load(source, requested)
    if loaded.desired is None:
        return RevisionPreview(
            source.name, requested.text, PreviewOutcome.REJECTED, info=loaded.info, errors=loaded.errors
        )
    failpoint("preview-planning")  # fetched and validated; the clusters not yet read
    planned, reached = _plan_against_clusters(source, loaded.desired, loaded.info.sha, cluster=cluster)
    return RevisionPreview(
        source.name,
        requested.text,
        PreviewOutcome.PLANNED,
        info=loaded.info,
        plan=planned,
        consumers=reached.effects,
        consumer_problems=reached.problems,
    )


def revision_preview_answer(source_id: int, revision: str, *, actor: str) -> dict[str, Any]:
    """A preview as plain data, whatever happened: what a worker hands back to the web."""
    source = Source.objects.filter(pk=source_id).first()
    if source is None:
        return {"outcome": PreviewOutcome.FAILED.value, "detail": "the source no longer exists"}
    try:
        with log_context(source=source.name):
            # The audit of a preview: it changes nothing, so a log line is its only record.
            log.info("preview of %r requested by %s", revision[:300], actor)
            previewed = revision_preview(source, revision)
    except GitopsError as error:
        return revision_not_planned(source, revision, error).as_dict()
    return previewed.as_dict(bounded=True)


def revision_timed_out(seconds: int) -> dict[str, Any]:
    """What a preview its worker stopped at its time limit answers (``gitops.tasks.preview_revision``):
    worth asking again, as when Git or a cluster does not answer, which is what keeps a preview that long."""
    return {
        "outcome": PreviewOutcome.UNAVAILABLE.value,
        "detail": f"the preview timed out: it ran for {seconds} s, as long as a preview may (its fetch, "
        "SLUICE_PREVIEW_TIMEOUT_SECONDS, and its reads of the clusters), and was stopped",
    }


def revision_not_planned(source: Source, revision: str, why: GitopsError) -> RevisionPreview:
    """What a preview that could not plan the revision says, and why."""
    outcome = PreviewOutcome.FAILED
    if isinstance(why, InvalidRevision):
        outcome = PreviewOutcome.INVALID_REVISION
    elif isinstance(why, RevisionNotFound):
        outcome = PreviewOutcome.NOT_FOUND
    elif isinstance(why, TemporaryError):
        outcome = PreviewOutcome.UNAVAILABLE
    return RevisionPreview(source.name, revision[:300], outcome, detail=redact_url(str(why)))
