"""Applying intents with server-side apply, many at a time. Says how each went; records nothing.

Intents are applied cluster by cluster, the clusters side by side. A cluster
that does not answer or refuses Sluice's credentials stops only its own batch:
its intents stay pending (a later pass applies them), and the other clusters'
batches go on.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django.conf import settings

from gitops import caches
from gitops.cluster import livestore, pools
from gitops.cluster.client import (
    UNAVAILABLE,
    WORKLOAD_KINDS,
    Applied,
    Cluster,
    ClusterRefused,
    FieldConflictError,
    NotFoundError,
    WriteOutcome,
)
from gitops.cluster.clients import clients, get_cluster
from gitops.desired.content import CONTENT_HASH_ANNOTATION, SOURCE_LABEL, Content
from gitops.errors import GitopsError, PermanentError
from gitops.locks import ReconcileLockLost, pass_fence
from gitops.models import ApplyIntent, Source
from gitops.plan.provenance import live_provenance
from gitops.vocabulary import ChangeAction

log = logging.getLogger(__name__)


class IntentAnswer(NamedTuple):
    """How an intent went: why its cluster refused it for good (None: done), the resourceVersion its
    write stored ("": not known, or nothing was stored), and whether a request of a refused intent had
    already changed the object (a replace's delete, a self-heal's apply)."""

    refusal: str | None
    resource_version: str = ""
    wrote: bool = False


DONE = IntentAnswer(None)
# How the apiserver refuses a ConfigMap holding one key in both data and binaryData (its validation's words).
DUPLICATE_KEY = "duplicate of key present in"


@dataclass
class AppliedIntents:
    """The intents that reached their cluster, with the cluster's answer to each (None: done), and the
    clusters that could not be reached (their intents stay pending)."""

    intents: list[ApplyIntent] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    unreachable: dict[str, GitopsError] = field(default_factory=dict)


def intents_apply_everywhere(
    intents: Sequence[ApplyIntent], *, connect: Callable[[str], Cluster] = get_cluster
) -> AppliedIntents:
    """Applies intents in their own clusters, the clusters side by side. Each write is fenced by the
    pass's lock (``locks.pass_fence``): a pass whose lock went with its session sends no more and
    raises ``ReconcileLockLost``; its intents stay pending, for the pass that takes over."""
    fence = pass_fence()  # asked on the pass's thread: the clusters' threads do not inherit it
    _name_holders(intents)
    groups: dict[str, list[ApplyIntent]] = {}
    for intent in intents:
        groups.setdefault(intent.cluster, []).append(intent)
    result = AppliedIntents()
    if not groups:
        return result
    kept: dict[str, dict[str, list[livestore.Written]]] = {}  # cluster -> the drops Redis did not take

    def batch(name: str) -> list[IntentAnswer] | GitopsError | ReconcileLockLost:
        try:
            client = connect(name)
            if (recent := clients.recently_unreachable(name)) is not None:
                return recent
        except GitopsError as exc:  # not registered any more, or its kubeconfig cannot be read
            return exc
        answer: list[IntentAnswer] | GitopsError | ReconcileLockLost
        try:
            answer = intents_apply(client, groups[name], fence=fence)
        except ReconcileLockLost as exc:  # the cluster answered: it is not marked unreachable
            answer = exc
        except UNAVAILABLE as exc:
            clients.mark_unreachable(name, exc)
            answer = exc
        except GitopsError as exc:
            answer = exc
        # On this cluster's thread: clusters side by side.
        if not_dropped := _unsettle_written(name, groups[name], answer):
            kept[name] = not_dropped
        return answer

    if len(groups) == 1:
        answers = {name: batch(name) for name in groups}
    else:
        with ThreadPoolExecutor(max_workers=len(groups)) as fan_out:
            answers = dict(zip(groups, fan_out.map(batch, groups), strict=True))
    if kept:
        _hold_stamps_to_drop({intent.source_id for name in kept for intent in groups[name]}, kept)
    # A lost lock ends the pass here, whatever else a cluster answered (it may have failed first).
    if (lost := getattr(fence, "lost", None)) is not None:
        raise lost
    for name, answer in answers.items():
        if isinstance(answer, ReconcileLockLost):
            raise answer
        if isinstance(answer, GitopsError):
            result.unreachable[name] = answer
        else:
            result.intents.extend(groups[name])
            result.errors.extend(each.refusal for each in answer)
    return result


HeldDrops = dict[str, dict[str, list[list[str]]]]  # Source.stamps_to_drop: cluster -> namespace -> drops


def _hold_stamps_to_drop(source_ids: set[int], kept: dict[str, dict[str, list[livestore.Written]]]) -> None:
    """Keeps the drops Redis did not take with each source written, beside those held already: until a
    pass has made them (``stamps_drop_held``), a stamp may show the content before the writes as
    applied, so the sources' plans read the cluster."""
    for source_id in source_ids:
        held: HeldDrops = (
            Source.all_objects.filter(pk=source_id).values_list("stamps_to_drop", flat=True).first() or {}
        )
        for cluster, namespaces in kept.items():
            for namespace, drops in namespaces.items():
                held.setdefault(cluster, {}).setdefault(namespace, []).extend(list(drop) for drop in drops)
        Source.all_objects.filter(pk=source_id).update(stamps_to_drop=held)
        caches.for_source(source_id).stamps_to_drop = held


def stamps_drop_held(source: Source) -> bool:
    """Makes the drops of the live cache's stamps that Redis did not take when the source's writes
    outdated them (``Source.stamps_to_drop``, or this process's note of them); True when none is held
    any more, False while Redis still does not take them (plans then read the cluster). Late is as
    good: a stamp that shows the write by now stays, and the floors hold back older events from now on."""
    held = caches.for_source(source.pk).stamps_to_drop or source.stamps_to_drop
    if not held:
        return True
    try:
        for cluster, namespaces in held.items():
            written = {ns: [livestore.Written(*drop) for drop in drops] for ns, drops in namespaces.items()}
            livestore.unsettle_written(cluster, written)
    except livestore.StampsKept:
        return False
    # Cleared only as read: a preview makes them without the source's lock, and a pass may have held more
    # drops meanwhile (from a worker whose Redis breaker is still open). Those stay for the next pass,
    # and this plan reads the cluster.
    if not Source.all_objects.filter(pk=source.pk, stamps_to_drop=held).update(stamps_to_drop={}):
        now_held = Source.all_objects.filter(pk=source.pk).values_list("stamps_to_drop", flat=True).first()
        caches.for_source(source.pk).stamps_to_drop = source.stamps_to_drop = now_held or {}
        return not now_held
    caches.for_source(source.pk).stamps_to_drop = {}
    source.stamps_to_drop = {}
    log.info("source %s: the live cache's stamps its writes outdated are dropped, late", source.name)
    return True


def _unsettle_written(
    cluster: str, intents: Sequence[ApplyIntent], answer: list[IntentAnswer] | Exception
) -> dict[str, list[livestore.Written]]:
    """The live cache's stamps of what was just written, until its watch stores the writes (see
    ``livestore.unsettle_written``); returns the drops Redis did not take (namespace -> writes). A
    cluster that stopped answering mid-batch may have taken any of them (their versions are not
    known); an intent it refused changed nothing. Only a batch that was sent gets here."""
    answers = [DONE] * len(intents) if isinstance(answer, Exception) else answer
    written: dict[str, list[livestore.Written]] = {}
    for intent, (refusal, version, wrote) in zip(intents, answers, strict=True):
        if intent.kind in WORKLOAD_KINDS or (refusal is not None and not wrote):
            continue
        # Refused midway, the object holds neither what it held nor what was meant: its stamp goes, and
        # a version the write stored before the refusal (a self-heal's apply) still floors older ones.
        done = refusal is None
        written.setdefault(intent.namespace, []).append(
            livestore.Written(intent.name, _written_hash(intent) if done else "", version)
        )
    if written:
        try:
            livestore.unsettle_written(cluster, written)
        except livestore.StampsKept:
            return written
    return {}


def _written_hash(intent: ApplyIntent) -> str:
    """The content hash the write leaves on the object; "" when it leaves none of Sluice's (a deletion,
    a release)."""
    if intent.manifest is None or intent.action == ChangeAction.RELEASE:
        return ""
    annotations = (intent.manifest.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(CONTENT_HASH_ANNOTATION, ""))


def intents_apply(
    cluster: Cluster, intents: Sequence[ApplyIntent], *, fence: Callable[[], None] = lambda: None
) -> list[IntentAnswer]:
    """Applies each intent, ``SLUICE_APPLY_CONCURRENCY`` at a time: for each, why it was refused (or
    None) and the resourceVersion it stored.

    A refusal for good (a field conflict, a 403, a 422) is an answer; a temporary
    failure (the apiserver is unreachable) raises, and the intents stay pending.
    After the first such failure the batch's other intents are not tried: a silent
    cluster costs one timeout, not one per object.

    Plain applies (a create or an update: one request each, whose answer is not read) go out
    together on the calling thread (``Cluster.apply_configmaps``), and so do plain prunes (a delete on
    the condition of the object the plan read, ``_plain_delete``; a rollback's delete of what its rollout
    created, on the condition of its own LIST) and a removal's releases (each from
    one LIST per namespace, ``_release_plain``); the others (replaces, self-heals, workloads' restarts,
    a prune or a release whose object changed since) each on a thread of the cluster's apply pool.
    ``fence`` is called before each write goes out, and stops the batch when it raises.
    """
    if not intents:
        return []
    concurrency = int(getattr(settings, "SLUICE_APPLY_CONCURRENCY", 16))
    if len(intents) == 1:
        return [_apply_one(cluster, intents[0], fence)]
    answers: list[IntentAnswer | None] = [None] * len(intents)
    if cluster.applies_in_batches:
        _apply_plain(cluster, intents, answers, concurrency, fence)
        _delete_plain(cluster, intents, answers, concurrency, fence)
        _release_plain(cluster, intents, answers, concurrency, fence)
    others = [index for index, answer in enumerate(answers) if answer is None]
    threaded = _apply_on_threads(cluster, [intents[index] for index in others], concurrency, fence)
    for index, answer in zip(others, threaded, strict=True):
        answers[index] = answer
    return [answer if answer is not None else DONE for answer in answers]


def _apply_plain(
    cluster: Cluster,
    intents: Sequence[ApplyIntent],
    answers: list[IntentAnswer | None],
    concurrency: int,
    fence: Callable[[], None],
) -> None:
    """The plain applies' answers, into ``answers``: one batch on the calling thread."""
    plain = [index for index, intent in enumerate(intents) if _plain_apply(intent)]
    if len(plain) <= 1:
        return
    outcomes = cluster.apply_configmaps(
        [(_manifest(intents[index]), intents[index].force) for index in plain],
        field_manager=settings.SLUICE_FIELD_MANAGER,
        width=concurrency,
        bodies=[intents[index].manifest_json for index in plain],
        before_each=fence,
    )
    for index, outcome in zip(plain, outcomes, strict=True):
        answers[index] = (
            IntentAnswer(None, outcome.resource_version)
            if isinstance(outcome, Applied)
            else IntentAnswer(_moved_keys_kept(intents[index], _refusal_text(outcome)))
        )


def _delete_plain(
    cluster: Cluster,
    intents: Sequence[ApplyIntent],
    answers: list[IntentAnswer | None],
    concurrency: int,
    fence: Callable[[], None],
) -> None:
    """The plain prunes' (and a rollback's plain deletes') answers, into ``answers``: one batch on the
    calling thread, each DELETE on the condition of the object read. One whose object changed since keeps
    no answer: it is read, and its labels checked, on a thread as any other delete
    (``Cluster.delete_configmap``)."""
    plain = [
        index for index, intent in enumerate(intents) if answers[index] is None and _plain_delete(intent)
    ]
    if len(plain) <= 1:
        return
    outcomes = cluster.delete_configmaps(
        [
            (intents[i].namespace, intents[i].name, (intents[i].live_uid, intents[i].live_version))
            for i in plain
        ],
        width=concurrency,
        before_each=fence,
    )
    for index, outcome in zip(plain, outcomes, strict=True):
        if outcome is WriteOutcome.CHANGED:
            # Its condition failed: the thread reads the object first, not the same DELETE again. In
            # memory only: the row keeps what was read (a resumed intent tries that once more).
            intents[index].live_uid = intents[index].live_version = ""
        else:
            answers[index] = _conditional_answer(outcome)


# The fewest releases in one namespace (of one source) that are listed together rather than read one by one.
RELEASES_LISTED = 8


def _conditional_answer(outcome: WriteOutcome | PermanentError) -> IntentAnswer:
    """A batched delete's or release's answer, as ``_apply_one`` gives it (gone is done: nothing is left
    to delete or to let go of)."""
    return IntentAnswer(_refusal_text(outcome)) if isinstance(outcome, PermanentError) else DONE


def _release_plain(
    cluster: Cluster,
    intents: Sequence[ApplyIntent],
    answers: list[IntentAnswer | None],
    concurrency: int,
    fence: Callable[[], None],
) -> None:
    """A removal's releases, their answers into ``answers``: each object's patch made from one LIST of
    the source's objects per namespace (not a read each), and sent in one batch on the calling thread,
    tested against the resourceVersion listed. One the LIST does not show as the source's, or whose test
    fails, is left to a thread: read, checked and released one by one (``Cluster.release_configmap``)."""
    plain = [
        index
        for index, intent in enumerate(intents)
        if answers[index] is None
        and intent.action == ChangeAction.RELEASE
        and intent.kind not in WORKLOAD_KINDS
    ]
    if len(plain) <= 1:
        return
    listed = _listed_as_held(cluster, [intents[index] for index in plain])
    sendable = [index for index in plain if (intents[index].namespace, intents[index].name) in listed]
    if not sendable:  # every namespace below RELEASES_LISTED, or nothing listed as the source's
        return
    outcomes = cluster.release_configmaps(
        [listed[(intents[index].namespace, intents[index].name)] for index in sendable],
        field_manager=settings.SLUICE_FIELD_MANAGER,
        width=concurrency,
        before_each=fence,
    )
    for index, outcome in zip(sendable, outcomes, strict=True):
        if outcome is not WriteOutcome.CHANGED:
            answers[index] = _conditional_answer(outcome)


def _listed_as_held(
    cluster: Cluster, intents: Sequence[ApplyIntent]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The intents' objects that carry their source's label now, by (namespace, name): one LIST per
    namespace and source, of that source's objects only, where it has ``RELEASES_LISTED`` intents or
    more. Fewer (a removal spread thin, or one resumed with a few pending in a namespace of thousands)
    are read one by one on threads: a LIST returns every object of the source there, and runs here,
    one after another."""
    wanted = {(intent.namespace, _holder(intent)): set[str]() for intent in intents}
    for intent in intents:
        wanted[(intent.namespace, _holder(intent))].add(intent.name)
    listed: dict[tuple[str, str], dict[str, Any]] = {}
    for (namespace, holder), names in wanted.items():
        if len(names) < RELEASES_LISTED:
            continue
        for live in cluster.list_configmaps(namespace, label_selector=f"{SOURCE_LABEL}={holder}"):
            name = (live.get("metadata") or {}).get("name")
            if name in names and live_provenance(live)[0] == holder:
                listed[(namespace, name)] = live
    return listed


def _plain_delete(intent: ApplyIntent) -> bool:
    """A prune of a ConfigMap the plan (or a removal's listing) read as the source's, or a rollback's
    delete of one the rollout created, read so by the rollback: one DELETE, on the condition that the
    object is still the one read."""
    return (
        intent.action in (ChangeAction.DELETE, ChangeAction.ROLLBACK)
        and intent.manifest is None
        and not intent.recreate
        and intent.kind not in WORKLOAD_KINDS
        and bool(intent.live_uid and intent.live_version)
    )


def _plain_apply(intent: ApplyIntent) -> bool:
    """A create or an update of a ConfigMap: one server-side apply, its answer not needed."""
    return (
        intent.manifest is not None
        and intent.kind not in WORKLOAD_KINDS
        and not intent.recreate
        and intent.action not in (ChangeAction.RELEASE, ChangeAction.DELETE, ChangeAction.REPLACE)
        and not _heals(intent)  # reads the stored object (``_drop_foreign_keys``)
        # A restore that may meet a key moved by hand is applied alone: refused, it takes the key out.
        and not (intent.action == ChangeAction.ROLLBACK and any(_moved_by_hand(intent)))
    )


def _heals(intent: ApplyIntent) -> bool:
    """A self-heal, or an update forced over edits in the cluster: both remove the keys added by hand.
    Not a rollback's restore, forced too: it takes its fields back and leaves others' keys."""
    return intent.action == ChangeAction.SELF_HEAL or (intent.action == ChangeAction.UPDATE and intent.force)


def _manifest(intent: ApplyIntent) -> Mapping[str, Any]:
    if intent.manifest is None:  # never: ``_plain_apply`` chose it for its manifest
        raise ValueError(f"intent {intent.pk} has no manifest")
    manifest: Mapping[str, Any] = intent.manifest
    return manifest


def _apply_on_threads(
    cluster: Cluster, intents: Sequence[ApplyIntent], concurrency: int, fence: Callable[[], None]
) -> list[IntentAnswer]:
    if len(intents) <= 1:
        return [_apply_one(cluster, intent, fence) for intent in intents]
    stopped = threading.Event()

    def apply(intent: ApplyIntent) -> IntentAnswer:
        if stopped.is_set():
            raise StoppedBatch()
        try:
            return _apply_one(cluster, intent, fence)
        except (*UNAVAILABLE, ReconcileLockLost):
            stopped.set()
            raise

    pool = pools.pool(cluster.name, "apply", concurrency)
    futures = [pool.submit(apply, intent) for intent in intents]
    wait_for(futures)
    failures = [f.exception() for f in futures if f.exception() is not None]
    first = next((e for e in failures if isinstance(e, ReconcileLockLost)), None) or next(
        (e for e in failures if not isinstance(e, StoppedBatch)), None
    )
    if first is not None:
        raise first
    return [f.result() for f in futures]


def _deletes(intent: ApplyIntent) -> bool:
    """Whether the intent's first request deletes the object (a prune, a replace, a recreate, or a
    rollback of a create)."""
    return (
        intent.action in (ChangeAction.DELETE, ChangeAction.REPLACE)
        or intent.recreate
        or (intent.action == ChangeAction.ROLLBACK and intent.manifest is None)
    ) and intent.kind not in WORKLOAD_KINDS


def _guarded(intent: ApplyIntent) -> bool:
    """Whether the intent's first request takes the object from its source (a delete, a release): it goes
    out only while the object is still labelled as that source's."""
    return intent.action == ChangeAction.RELEASE or _deletes(intent)


def _name_holders(intents: Sequence[ApplyIntent]) -> None:
    """The source names of the intents a label check guards (``ApplyIntent.holder``), read in one query
    on the pass's thread: names only (a source's row holds its plan, megabytes), and no query from an
    apply pool's thread."""
    guarded = [intent for intent in intents if _guarded(intent) and not intent.holder]
    for intent in guarded:
        if ApplyIntent.source.is_cached(intent):  # read with its source already
            intent.holder = intent.source.name
    guarded = [intent for intent in guarded if not intent.holder]
    if not guarded:
        return
    names = dict(
        Source.all_objects.filter(pk__in={intent.source_id for intent in guarded}).values_list("pk", "name")
    )
    for intent in guarded:
        if intent.source_id not in names:  # never: a source's row outlives its intents (soft deletion)
            raise PermanentError(f"intent {intent.pk}: its source {intent.source_id} is gone")
        intent.holder = names[intent.source_id]


def _holder(intent: ApplyIntent) -> str:
    return intent.holder or intent.source.name  # the latter: an intent applied without _name_holders


class StoppedBatch(Exception):
    """An intent not tried because its cluster already failed in this batch."""


def _apply_one(cluster: Cluster, intent: ApplyIntent, fence: Callable[[], None]) -> IntentAnswer:
    """One intent's requests, ``fence`` asked before each."""
    fence()
    if intent.kind in WORKLOAD_KINDS:
        return IntentAnswer(_stamp_workload(cluster, intent))
    version, writes = "", _Writes()
    try:
        if intent.action == ChangeAction.RELEASE:
            cluster.release_configmap(
                intent.namespace,
                intent.name,
                field_manager=settings.SLUICE_FIELD_MANAGER,
                fence=fence,
                held_by=_holder(intent),
            )
            return DONE
        if _deletes(intent):
            cluster.delete_configmap(
                intent.namespace,
                intent.name,
                held_by=_holder(intent),
                seen=(intent.live_uid, intent.live_version),
                fence=fence,
            )
            writes.made = True
            fence()
        if intent.manifest is not None:
            applied = _apply_configmap(cluster, intent, fence, writes)
            version = str((applied.get("metadata") or {}).get("resourceVersion") or "")
            fence()
            # A self-heal's removal of foreign keys is a later version; the apply's own event, between
            # the two, is not as applied (it still holds those keys), so it settles nothing.
            _drop_foreign_keys(cluster, intent, applied)
    except ClusterRefused:
        raise  # the cluster refuses Sluice's credentials: nothing of it is applied now
    except PermanentError as exc:
        # A self-heal whose apply went through and whose removal of foreign keys was refused stored a
        # version all the same: the live cache's floor holds back stamps older than it.
        stored = version if version.isdigit() else ""
        return IntentAnswer(_moved_keys_kept(intent, _refusal_text(exc)), stored, wrote=writes.made)
    return IntentAnswer(None, version if version.isdigit() else "")


def _refusal_text(refusal: PermanentError) -> str:
    """Why the cluster refused an apply for good, as the change log and the pass report it."""
    if isinstance(refusal, FieldConflictError):
        return f"conflict with another field manager: {refusal}"
    return str(refusal)


def _stamp_workload(cluster: Cluster, intent: ApplyIntent) -> str | None:
    """A restart (or its rollback): server-side apply of the pod template's stamp, and nothing else."""
    if intent.manifest is None:
        return None
    gone = f"{intent.kind.lower()} {intent.namespace}/{intent.name} is gone"
    try:
        cluster.apply_workload(intent.manifest, field_manager=settings.SLUICE_FIELD_MANAGER, force=True)
    except NotFoundError:
        return gone
    except ClusterRefused:
        raise
    except PermanentError as exc:
        # An apply to a workload deleted meanwhile is a create, refused as invalid (a stamp is no whole
        # workload) or forbidden (Sluice may not create one): say what happened, not the apiserver's text.
        try:
            missing = cluster.get_workload(intent.kind, intent.namespace, intent.name) is None
        except GitopsError:
            missing = False
        return gone if missing else str(exc)
    return None


@dataclass
class _Writes:
    """Whether an intent's requests wrote anything yet: a refusal after a write is not a refusal whole."""

    made: bool = False


def _apply_configmap(
    cluster: Cluster, intent: ApplyIntent, fence: Callable[[], None], writes: _Writes
) -> dict[str, Any]:
    """The intent's server-side apply: the object as stored (``writes`` says what was written). Refused
    for a key in both data and binaryData (moved there by hand), a heal or a rollback takes the moved
    copy out (``_take_moved_keys_out``) and applies again; only then, so a commit that moves a key
    itself, which the apply alone does whole, is never split into two writes."""
    apply = functools.partial(
        cluster.apply_configmap,
        intent.manifest,
        field_manager=settings.SLUICE_FIELD_MANAGER,
        force=intent.force,
    )
    try:
        applied: dict[str, Any] = apply()
    except PermanentError as exc:
        if writes.made or DUPLICATE_KEY not in str(exc):
            raise
        fence()  # the patch is a write of its own: the lock is asked before it, as before every write
        if not _take_moved_keys_out(cluster, intent):
            raise
        writes.made = True
        fence()
        applied = apply()
    writes.made = True
    return applied


def _take_moved_keys_out(cluster: Cluster, intent: ApplyIntent) -> bool:
    """A heal of a key moved by hand between data and binaryData: the apiserver refuses an object holding
    a key in both, so the apply alone was refused at every pass. A merge patch takes the key out of the
    section Git does not have it in, and the apply then sets Git's: whether the patch was made.

    Only a removal: it makes no field owner. A patch that also set Git's value made Sluice a second owner
    of the key (an Update beside its Apply), and Sluice's later changes to it conflicted with itself. The
    cost: until the apply, the key is in neither section (an apply refused then leaves it so until a
    later pass; the object already held it where no pod read it as Git has it).

    A rollback's restore too: refused the same way, the rollback stayed owed for good, and an abort never
    finished."""
    if not (_heals(intent) or intent.action == ChangeAction.ROLLBACK):
        return False
    out_of_data, out_of_binary = _moved_by_hand(intent)
    if not out_of_binary and not out_of_data:
        return False
    try:
        cluster.remove_configmap_keys(
            intent.namespace,
            intent.name,
            data=out_of_data,
            binary_data=out_of_binary,
            field_manager=settings.SLUICE_FIELD_MANAGER,
        )
    except NotFoundError:
        return False  # deleted since the plan: the next pass's apply creates it
    return True


def _moved_by_hand(intent: ApplyIntent) -> tuple[list[str], list[str]]:
    """The keys Git has in one section that the object held in the other when planned: (in data, to go
    to binaryData; in binaryData, to go to data)."""
    if intent.before is None or intent.after is None:
        return [], []
    live, wanted = Content.from_dict(intent.before), Content.from_dict(intent.after)
    return sorted(set(wanted.binary_data) & set(live.data)), sorted(set(wanted.data) & set(live.binary_data))


def _moved_keys_kept(intent: ApplyIntent, refusal: str) -> str:
    """A refused change to an object with a key moved by hand, selfHeal off (a heal and a rollback take
    such keys out and apply again): the apiserver's 422 said only "duplicate of key present in binaryData"."""
    # The apiserver's words for a key in both sections: a commit that moves a key itself (applied whole,
    # it takes its old place away) refused for another reason is not blamed on the cluster's copy. A heal
    # or a rollback takes such a key out, so whatever refused it is not selfHeal's.
    unforced_update = intent.action == ChangeAction.UPDATE and not intent.force
    if not unforced_update or DUPLICATE_KEY not in refusal:
        return refusal
    in_data, in_binary = _moved_by_hand(intent)
    if not in_data and not in_binary:
        return refusal
    held = [f"{key!r} is in data" for key in in_data] + [f"{key!r} is in binaryData" for key in in_binary]
    # Moved there by hand, or left there by a commit that moved it while another manager held it: either
    # way the cluster's copy is someone else's, which Sluice without selfHeal leaves alone.
    return (
        f"{', '.join(held)} in the cluster, held there by another field manager, and in the other section "
        "in Git: the apiserver refuses a key in both, and without selfHeal Sluice leaves edits made in the "
        f"cluster alone; remove it there, or turn selfHeal on ({refusal})"
    )


def _drop_foreign_keys(cluster: Cluster, intent: ApplyIntent, applied: Mapping[str, Any]) -> None:
    """Self-heal also removes data keys another manager added, which apply alone leaves in place; so does
    an update forced over edits made in the cluster (selfHeal on, Git changed too), whose diff and change
    log say those keys go (they stayed, and the next pass healed them in a second write)."""
    if not _heals(intent) or intent.after is None:
        return
    wanted = Content.from_dict(intent.after)
    extra_data = sorted(set(applied.get("data") or {}) - set(wanted.data))
    extra_binary = sorted(set(applied.get("binaryData") or {}) - set(wanted.binary_data))
    if extra_data or extra_binary:
        cluster.remove_configmap_keys(
            intent.namespace, intent.name, data=extra_data, binary_data=extra_binary
        )
