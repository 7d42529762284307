"""Rolling a rollout back: every target it changed gets exactly what it held before, provenance included.

ConfigMaps are restored first, then the workloads the rollout restarted get
their previous stamp back, so their new pods start with the old content.

A cluster that does not answer (or refuses) is owed its rollback: the rollout
ends all the same, lists it in ``rollback_pending_clusters``, and every later
reconcile of the source (a timer wakes it) tries that cluster again until it
answers and is restored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from gitops import schedule
from gitops.cluster import get_cluster
from gitops.cluster.client import WORKLOAD_KINDS
from gitops.cluster.live import live_configmaps
from gitops.consumers.wave import restoring_intent
from gitops.consumers.workloads import restart_holds, workload_from
from gitops.errors import GitopsError
from gitops.failpoints import failpoint
from gitops.models import ApplyIntent, Rollout, Source
from gitops.plan.provenance import live_provenance, write_holds
from gitops.plan.stamps import FLAG_SET_KIND
from gitops.record.changelog import changes_record
from gitops.record.events import rollout_event
from gitops.record.inventory import CONFIGMAP
from gitops.rollout.flag_catalog import RestoredFlagSet, flag_catalog_rolled_back
from gitops.rollout.state import cluster_retry_delay, owed_rollback_added, unreachable_text
from gitops.rollout.step import failures_without, intents_execute, refused_as_taken_over
from gitops.vocabulary import SYSTEM_ACTOR, ChangeAction, RolloutEventKind

ObjectKey = tuple[str, str, str, str]  # (cluster, kind, namespace, name)
Place = tuple[str, str]  # (cluster, namespace)

log = logging.getLogger("gitops.rollout")


@dataclass
class Restored:
    failures: list[str] = field(default_factory=list)  # refusals for good
    owed: dict[str, str] = field(default_factory=dict)  # clusters not reached, and why
    # Targets found already holding what they held before: an earlier try of this rollback may have
    # restored them (a crash, or a cluster that stopped answering mid-batch, before it was logged).
    settled: set[ObjectKey] = field(default_factory=set)
    # Each target's newest forward change still pending: one in effect (applied, then the batch was cut
    # short) is logged before the restore that takes it back, so the log holds what the cluster got.
    pending: dict[ObjectKey, list[ApplyIntent]] = field(default_factory=dict)  # newest first
    # The ConfigMaps whose restore the cluster refused, and those it took, by place: a workload that
    # reads only refused ones keeps its stamp, since its pods already hold the content they still have.
    refused: dict[Place, set[str]] = field(default_factory=dict)
    put_back: dict[Place, set[str]] = field(default_factory=dict)
    # Targets someone took over while the rollout ran (``_released_by_hand``): left as they are.
    left_alone: list[str] = field(default_factory=list)
    # The flag sets the rollout wrote or meant to, each with the change whose ``before`` is what the
    # cluster holds again: the one its rollback restores from, or its first, which the cluster never got.
    flag_sets: dict[ObjectKey, ApplyIntent] = field(default_factory=dict)

    def keeps_its_restart(self, place: Place, live: Mapping[str, Any]) -> bool:
        """Whether the workload ``live`` at ``place`` reads a ConfigMap whose restore was refused and
        none that was put back: stamping it back would restart it onto the same, new, content."""
        reads = workload_from(live, place[0]).consumes
        return bool(reads & self.refused.get(place, set())) and not reads & self.put_back.get(place, set())


def rollout_rollback(rollout: Rollout, *, actor: str, reason: str, phase: Rollout.Phase) -> list[str]:
    """Restores every target this rollout changed, then ends it in ``phase`` (Failed if a restore failed).

    Clusters that cannot be reached now are owed their rollback (see ``rollbacks_owed_finish``). A
    person's abort stored before the caller's decision (a supersede, a consumer gate's timeout) is what
    the rollback carries out: it ends Aborted, in their name and with their reason.
    """
    actor, reason, phase = rollback_decide(rollout, actor=actor, reason=reason, phase=phase)
    failpoint("mid-rollback")
    restored = _restore(rollout, actor, clusters=None)
    now = timezone.now()
    owed = sorted(restored.owed)
    message = reason + (
        f"; rollback failed for {len(restored.failures)}: " + "; ".join(restored.failures[:3])
        if restored.failures
        else ""
    )
    if owed:
        message += "; rollback owed on " + unreachable_text(restored.owed)
        owed_rollback_added(rollout.source_id)
    if restored.left_alone:
        shown = ", ".join(restored.left_alone[:3]) + (", …" if len(restored.left_alone) > 3 else "")
        message += f"; left as they are, taken over during the rollout: {shown}"
    retry_at = now + cluster_retry_delay() if owed else None
    # With its timeline's line (and the notification it sends) or not at all: the next pass rolls back
    # again, finding the targets restored, where a crash in between lost the line for good. The flag
    # catalog too: whoever reads the rollout ended reads the flags its clusters serve again.
    with transaction.atomic():
        _flag_catalog_after(rollout, restored)
        Rollout.objects.filter(pk=rollout.pk).update(
            phase=Rollout.Phase.FAILED if restored.failures else phase,
            waiting_for="",
            pause_until=retry_at,
            rollback_pending_clusters=owed,
            finished_at=now,
            updated_at=now,
            message=message,
        )
        rollout.reload()
        kind = RolloutEventKind.ROLLBACK_FAILED if restored.failures else RolloutEventKind.ROLLED_BACK
        rollout_event(rollout, kind, actor=actor, message=message, data={"pending_clusters": owed})
    if retry_at is not None:
        schedule.source_sync_at(rollout.source_id, retry_at)
    return restored.failures


def _flag_catalog_after(rollout: Rollout, restored: Restored) -> None:
    """The Flags page's catalog once the rollback is done (``flag_catalog_rolled_back``). A rollout that
    wrote no flag set costs nothing here: its intents, read already, say so."""
    if not restored.flag_sets:
        return
    sets = []
    left_alone = set(restored.left_alone)
    for (cluster, _, namespace, name), intent in restored.flag_sets.items():
        # A refused restore, a set someone took over meanwhile, or a cluster that did not answer (its
        # rollback is owed): the cluster keeps the rollout's content, and its keys count for other sources.
        kept = (
            name in restored.refused.get((cluster, namespace), set())
            or cluster in restored.owed
            or f"{cluster}/{namespace}/{name}" in left_alone
        )
        sets.append(RestoredFlagSet(cluster, namespace, name, intent.before, kept=kept))
    try:
        with transaction.atomic():  # a savepoint: what fails here leaves the rest of the rollback whole
            flag_catalog_rolled_back(rollout, sets)
    except Exception:  # the page's record: it must not keep the rollout from ending, pass after pass
        log.exception("rollout %s: the flag catalog was not brought back after its rollback", rollout.pk)


def rollback_decide(
    rollout: Rollout, *, actor: str, reason: str, phase: Rollout.Phase
) -> tuple[str, str, Rollout.Phase]:
    """Saves the decision to roll back before anything is restored, as a person's abort is saved: a
    worker that dies mid-restore leaves a rollout that the next pass rolls back (``rollback_phase``
    says how it ends), not one it drives on from restored targets. A person's abort asked first keeps
    its own name and reason. Returns the decision stored: who, why, and the phase the rollout ends in
    (the caller's own when nothing was stored: an ended rollout, rolled back again)."""
    decided = Rollout.objects.filter(
        pk=rollout.pk, phase__in=Rollout.ACTIVE_PHASES, abort_requested_by=""
    ).update(abort_requested_by=actor, abort_reason=reason, rollback_phase=phase, updated_at=timezone.now())
    if decided:
        return actor, reason, phase
    stored = (
        Rollout.objects.filter(pk=rollout.pk, phase__in=Rollout.ACTIVE_PHASES)
        .values_list("abort_requested_by", "abort_reason", "rollback_phase")
        .first()
    )
    if stored is None or not stored[0]:
        return actor, reason, phase
    asked_by, asked_why, asked_phase = stored
    return asked_by, asked_why or reason, Rollout.Phase(asked_phase or Rollout.Phase.ABORTED)


def rollbacks_owed_finish(source: Source) -> None:
    """Restores the clusters that ended rollouts of ``source`` still owe a rollback, as far as they answer.

    Each is tried when its retry is due (``pause_until``), and only that try schedules the next, so a
    cluster that stays down is asked every ``SLUICE_CLUSTER_RETRY_SECONDS``, however often the source
    is reconciled meanwhile.
    """
    for rollout in rollbacks_owing(source).select_related("source", "revision"):
        owed = set(rollout.rollback_pending_clusters)
        actor = rollout.abort_requested_by or SYSTEM_ACTOR
        restored = _restore(rollout, actor, clusters=owed)
        done = sorted(owed - set(restored.owed))
        # One transaction: nobody sees a cluster no longer owed without the event saying it was restored.
        with transaction.atomic():
            # Only the clusters restored now leave the list: one an administrator waived meanwhile
            # (``rollout_rollback_waive``) is not put back.
            listed = Rollout.objects.select_for_update(no_key=True).values_list(
                "rollback_pending_clusters", flat=True
            )
            still = sorted(set(listed.get(pk=rollout.pk)) - set(done))
            retry_at = timezone.now() + cluster_retry_delay() if still else None
            Rollout.objects.filter(pk=rollout.pk).update(
                rollback_pending_clusters=still, pause_until=retry_at, updated_at=timezone.now()
            )
            if retry_at is not None:
                schedule.source_sync_at(source.pk, retry_at)
            if done:
                rollout.reload()
                _restored_event(rollout, actor, done, still, restored.failures)
                if restored.flag_sets and not _flag_sets_written_since(rollout, restored):
                    # The clusters restored now serve what the set held before; the rows of a set a
                    # newer rollout wrote are that rollout's.
                    _flag_catalog_after(rollout, restored)


def _flag_sets_written_since(rollout: Rollout, restored: Restored) -> bool:
    """Whether a newer rollout of the source wrote one of the flag sets ``restored`` holds."""
    names = {name for _, _, _, name in restored.flag_sets}
    newer = ApplyIntent.objects.filter(
        source_id=rollout.source_id, rollout_id__gt=rollout.pk, kind=CONFIGMAP, name__in=names
    )
    return newer.exists()


def rollbacks_owing(source: Source | int, now: datetime | None = None) -> QuerySet[Rollout]:
    """The ended rollouts of ``source`` (or its id) that owe a cluster a rollback whose retry is due
    (``now``, unless told)."""
    return (
        Rollout.objects.filter(source=source)
        .filter(Q(pause_until__isnull=True) | Q(pause_until__lte=now or timezone.now()))
        .exclude(rollback_pending_clusters=[])
    )


def _restored_event(
    rollout: Rollout, actor: str, done: list[str], still: list[str], failures: list[str]
) -> None:
    message = f"rolled back on {', '.join(done)}" + (
        f"; failed for {len(failures)}: " + "; ".join(failures[:3]) if failures else ""
    )
    kind = RolloutEventKind.ROLLBACK_FAILED if failures else RolloutEventKind.ROLLED_BACK
    rollout_event(rollout, kind, actor=actor, message=message, data={"pending_clusters": still})


def _restore(rollout: Rollout, actor: str, *, clusters: set[str] | None) -> Restored:
    """Restores the rollout's targets in ``clusters`` (None: all of them)."""
    first_intents: dict[ObjectKey, ApplyIntent] = {}
    flag_sets: dict[ObjectKey, ApplyIntent] = {}
    restored = Restored()
    # A heal during the rollout (selfHeal taking back an edit made in the cluster) is not the rollout's
    # change: restored, the edit came back, stamped as Git's, and stayed (as ``step.flag_baselines``).
    changes = rollout.intents.exclude(action__in=(ChangeAction.ROLLBACK, ChangeAction.SELF_HEAL))
    if clusters is not None:
        changes = changes.filter(cluster__in=clusters)
    for intent in changes.order_by("id"):
        key = (intent.cluster, intent.kind, intent.namespace, intent.name)
        if _writes_flag_set(intent):
            flag_sets.setdefault(key, intent)
        if intent.status == ApplyIntent.Status.DROPPED or (
            intent.status == ApplyIntent.Status.FAILED and not _may_have_written(intent)
        ):
            continue
        # A pending intent's cluster did not answer it (or a crash came first). It is restored from
        # what the cluster holds, like a done one, so that what this rollout never got to apply is
        # not applied only to be taken back (``intents_pending`` leaves it to this).
        first_intents.setdefault(key, intent)
        if intent.status == ApplyIntent.Status.PENDING:
            restored.pending.setdefault(key, []).insert(0, intent)
    restored.flag_sets = {key: first_intents.get(key, first) for key, first in flag_sets.items()}
    configmaps = {key: intent for key, intent in first_intents.items() if key[1] not in WORKLOAD_KINDS}
    workloads = {key: intent for key, intent in first_intents.items() if key[1] in WORKLOAD_KINDS}
    # A rollback owed to a cluster that did not answer runs later: by then a newer rollout may have
    # written there, and its content must not be put back to what came before this one.
    since = _since(rollout, first_intents) if clusters is not None else None
    _restore_configmaps(rollout, configmaps, actor, restored, since=since)
    _restore_workloads(rollout, workloads, actor, restored, since=since)
    _log_earlier_restores(rollout, restored)
    _drop_unapplied(rollout, clusters, still_owed=set(restored.owed))
    return restored


def _writes_flag_set(intent: ApplyIntent) -> bool:
    """Whether ``intent`` writes a flag set (its manifest's kind label says so) or deletes one (a prune at
    100: no manifest, and what it found holds a flag set's document)."""
    return intent.kind == CONFIGMAP and intent.written_kind() == FLAG_SET_KIND


def _may_have_written(intent: ApplyIntent) -> bool:
    """Whether a change the cluster refused may have written before the refusal: a replace (an
    immutable ConfigMap's, or a recreate) whose delete went through, or a heal or forced update whose
    apply did before its removal of foreign keys was refused. Its target is restored from what the
    cluster holds, as a pending one's is: left out, an immutable ConfigMap stayed deleted after its
    rollout rolled back. One found as before is settled, nothing written."""
    return (
        intent.recreate
        or intent.action in (ChangeAction.REPLACE, ChangeAction.SELF_HEAL)
        or (intent.action == ChangeAction.UPDATE and intent.force)
    )


def _log_earlier_restores(rollout: Rollout, restored: Restored) -> None:
    """Logs an earlier try's restore of each target found already restored: that try applied it (a crash,
    or a cluster that stopped answering mid-batch, came before it was logged). Logged, not applied again:
    the target holds it, and applying an immutable ConfigMap's restore would delete and recreate it.
    The newest such restore is the one that took effect (a later try made one only if the earlier had
    not); dropped unlogged, a change the cluster got would be missing from the log."""
    if not restored.settled:
        return
    pending = rollout.intents.filter(
        action=ChangeAction.ROLLBACK,
        status=ApplyIntent.Status.PENDING,
        cluster__in={key[0] for key in restored.settled} - set(restored.owed),
    ).order_by("-id")
    newest: dict[ObjectKey, ApplyIntent] = {}
    for intent in pending:
        key = (intent.cluster, intent.kind, intent.namespace, intent.name)
        if key in restored.settled:
            newest.setdefault(key, intent)
    if newest:
        intents = list(newest.values())
        changes_record(intents, [None] * len(intents))


def _drop_unapplied(rollout: Rollout, clusters: set[str] | None, *, still_owed: set[str]) -> None:
    """Settles the rollout's pending intents in the clusters now restored (``clusters``, None: all),
    an earlier rollback's among them: every target there holds what it held before this rollout,
    so none of them is to be applied any more. They are dropped, never logged, as a removal drops
    an earlier removal's (see ``source_removal``)."""
    pending = rollout.intents.exclude(cluster__in=still_owed)
    if clusters is not None:
        pending = pending.filter(cluster__in=clusters)
    ApplyIntent.drop_pending(pending)


@dataclass(frozen=True)
class Since:
    """What happened since a rollout ended, for its owed rollback to leave alone."""

    written: set[ObjectKey]  # objects the change history gives to another rollout (``_written_since``)
    # The commits of newer rollouts of the source that completed: each went to 100% and found every
    # object it planned as its revision wants, written or already right. One it found right has no
    # history, but its commit stamp, when it is this rollout's commit too (a branch moved back).
    vouched: frozenset[str]


def _since(rollout: Rollout, first_intents: Mapping[ObjectKey, ApplyIntent]) -> Since:
    completed = Rollout.objects.filter(
        source_id=rollout.source_id, pk__gt=rollout.pk, phase=Rollout.Phase.COMPLETED
    ).values_list("revision__commit", flat=True)
    return Since(_written_since(rollout, first_intents), frozenset(completed))


def _written_since(rollout: Rollout, first_intents: Mapping[ObjectKey, ApplyIntent]) -> set[ObjectKey]:
    """The objects whose content, as the change history tells it, is no longer this rollout's.

    A commit stamp cannot tell this rollout from a later one of the same commit (a branch moved back
    to it), so the database decides. Walking back from the last write, a rollback stands for what
    the object held before its rollout's first change: a newer rollout rolled back hands the object
    back to whoever held it before.
    """
    if not first_intents:
        return set()
    start = min(intent.pk for intent in first_intents.values())
    history: dict[ObjectKey, list[tuple[int | None, bool]]] = {}
    rows = (
        ApplyIntent.objects.filter(
            source_id=rollout.source_id,
            cluster__in={key[0] for key in first_intents},
            status=ApplyIntent.Status.DONE,
            pk__gte=start,
        )
        .order_by("id")
        .values_list("pk", "cluster", "kind", "namespace", "name", "rollout_id", "action")
    )
    for pk, cluster, kind, namespace, name, rollout_id, action in rows.iterator(chunk_size=2000):
        key = (cluster, kind, namespace, name)
        first = first_intents.get(key)
        if first is not None and pk >= first.pk:
            history.setdefault(key, []).append((rollout_id, action == ChangeAction.ROLLBACK))
    # A pending first change with nothing done after it says nothing here: the commit stamp decides.
    return {
        key
        for key, first in first_intents.items()
        if (key in history or first.status == ApplyIntent.Status.DONE)
        and _holder(history.get(key, [])) != rollout.pk
    }


def _holder(history: list[tuple[int | None, bool]]) -> int | None:
    """The rollout whose content an object holds after ``history`` (the writes that took effect, in
    order); None when it holds what it held before all of them."""
    first_at: dict[int | None, int] = {}
    for position, (rollout_id, _) in enumerate(history):
        first_at.setdefault(rollout_id, position)
    position = len(history) - 1
    while position >= 0:
        rollout_id, rollback = history[position]
        if not rollback:
            return rollout_id
        if first_at[rollout_id] == position:  # its rollout's changes here all predate the history
            return None
        position = first_at[rollout_id] - 1  # what the object held before that rollout came
    return None


def _released_by_hand(rollout: Rollout, live: Mapping[str, Any] | None) -> bool:
    """Whether someone took the object over while the rollout ran, as the README says to: Sluice's
    labels removed, or another source's name put on it. Its rollback leaves it as they left it, as a
    pending deletion of it is dropped (``step._still_ours``): a rollback deleted an object the
    rollout had created, or took back one it had changed, forcing Sluice's labels on again. (A
    rollout never takes the labels off itself: every manifest it writes sets them; only a source's
    removal releases.)"""
    return live is not None and live_provenance(live)[0] != rollout.source.name


def _taken_over(
    rollout: Rollout, first: ApplyIntent, live: Mapping[str, Any], vouched: frozenset[str]
) -> bool:
    """Whether the object carries another source's name, a newer completed rollout's commit, or a
    commit neither this rollout nor what it replaced wrote (a newer rollout's, or a hand's), which an
    owed rollback leaves alone."""
    source, commit, _ = live_provenance(live)
    if source is not None and source != rollout.source.name:
        return True
    return bool(commit) and (
        commit in vouched or commit not in (rollout.revision.commit, first.before_commit)
    )


def _restore_configmaps(
    rollout: Rollout,
    first_intents: dict[ObjectKey, ApplyIntent],
    actor: str,
    restored: Restored,
    *,
    since: Since | None,
) -> None:
    if not first_intents:
        return
    live = live_configmaps({(cluster, namespace) for cluster, _, namespace, _ in first_intents})
    restored.owed.update(live.reasons())
    index = live.index()
    restores: list[ApplyIntent] = []
    in_effect: list[ApplyIntent] = []
    for key, first in sorted(first_intents.items()):
        cluster, _, namespace, name = key
        found = index.get((cluster, namespace, name))
        # An object a later rollout deleted stays deleted: the history says so, with nothing live.
        if cluster in restored.owed or (
            since is not None
            and (
                key in since.written
                or (found is not None and _taken_over(rollout, first, found, since.vouched))
            )
        ):
            continue
        if held := next((p for p in restored.pending.get(key, ()) if _configmap_holds(found, p)), None):
            in_effect.append(held)  # logged even when left alone below: the cluster got it
        if _released_by_hand(rollout, found):
            restored.left_alone.append(f"{cluster}/{namespace}/{name}")
            # Kept as a refused restore is: a workload reading only such ConfigMaps keeps its restart,
            # its pods already holding the content they still have.
            restored.refused.setdefault((cluster, namespace), set()).add(name)
            continue
        if (restore := ApplyIntent.restoring(rollout, first, found, actor=actor)) is not None:
            restores.append(restore)
        else:  # as before already
            restored.settled.add(key)
            if first.status == ApplyIntent.Status.DONE:  # changed, then put back by an earlier try
                restored.put_back.setdefault((cluster, namespace), set()).add(name)
    _log_in_effect(in_effect)
    _execute(rollout, restores, restored)
    for restore in restores:
        if restore.status != ApplyIntent.Status.PENDING:
            taken = restore.status == ApplyIntent.Status.DONE
            outcome = restored.put_back if taken else restored.refused
            outcome.setdefault((restore.cluster, restore.namespace), set()).add(restore.name)


def _restore_workloads(
    rollout: Rollout,
    first_intents: dict[ObjectKey, ApplyIntent],
    actor: str,
    restored: Restored,
    *,
    since: Since | None,
) -> None:
    restores: list[ApplyIntent] = []
    in_effect: list[ApplyIntent] = []
    for key, first in sorted(first_intents.items()):
        cluster, kind, namespace, name = key
        if cluster in restored.owed:
            continue
        try:
            live = get_cluster(cluster).get_workload(kind, namespace, name)
        except GitopsError as exc:  # unreachable, refusing, or not registered any more
            restored.owed[cluster] = str(exc)
            continue
        if since is not None and (
            key in since.written
            or (live is not None and _workload_taken_over(rollout, first, live, since.vouched))
        ):
            continue
        if held := next((p for p in restored.pending.get(key, ()) if _workload_holds(live, p)), None):
            in_effect.append(held)
        if live is not None and restored.keeps_its_restart((cluster, namespace), live):
            log.info("%s %s/%s keeps its restart: what it reads was not restored", kind, namespace, name)
            continue
        if (restore := restoring_intent(rollout, first, live, actor=actor)) is not None:
            restores.append(restore)
        elif live is not None:  # one deleted since is left alone, as before: nothing to log
            restored.settled.add(key)
    _log_in_effect(in_effect)
    _execute(rollout, restores, restored)


def _configmap_holds(live: Mapping[str, Any] | None, intent: ApplyIntent) -> bool:
    """Whether the cluster's object shows that ``intent`` took effect (``provenance.write_holds``)."""
    return write_holds(live, manifest=intent.manifest, after=intent.after, before=intent.before)


def _workload_holds(live: Mapping[str, Any] | None, intent: ApplyIntent) -> bool:
    """Whether the workload carries the stamp ``intent`` writes: its restart took effect."""
    return restart_holds(live, intent.cluster, intent.after)


def _log_in_effect(intents: list[ApplyIntent]) -> None:
    """Logs forward changes a cut-short batch applied and never logged, before what takes them back."""
    if intents:
        changes_record(intents, [None] * len(intents))


def _workload_taken_over(
    rollout: Rollout, first: ApplyIntent, live: Mapping[str, Any], vouched: frozenset[str]
) -> bool:
    """A workload a newer rollout restarted since carries that rollout's commit in its stamp (or a
    newer completed rollout found it as it wants it)."""
    stamped = workload_from(live, first.cluster).commit
    before = (first.before or {}).get("commit", "")
    return bool(stamped) and (stamped in vouched or stamped not in (rollout.revision.commit, before))


def _execute(rollout: Rollout, restores: list[ApplyIntent], restored: Restored) -> None:
    if not restores:
        return
    with transaction.atomic():
        created = ApplyIntent.objects.bulk_create(restores)
    executed = intents_execute(created)
    # Taken over (or deleted) between the rollback's LIST and its write: left as they are, as one the
    # LIST found so (``_released_by_hand``). Before, Sluice's refusal of its own delete failed the rollout.
    taken = refused_as_taken_over(rollout.source.name, created) if executed.failures else []
    restored.left_alone.extend(f"{intent.cluster}/{intent.namespace}/{intent.name}" for intent in taken)
    restored.failures.extend(failures_without(executed.failures, taken))
    restored.owed.update(executed.unreachable)
