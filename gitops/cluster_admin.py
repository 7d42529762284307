"""Clusters, as an administrator manages them: register one, list them with their health, grant or
revoke a registration's TLS allowance, remove one, or forget one that is gone for good.

Credentials stay by reference, as for Git: a kubeconfig path and context on the
workers' filesystem, or the in-cluster service account. Nothing secret is stored
in the database or shown: a status names where credentials live, the server URL
and the version, never a token or a certificate.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet

from gitops.cluster import Cluster, clients
from gitops.cluster.clients import ClusterRef
from gitops.desired.scope import AdminScope
from gitops.errors import GitopsError, PermanentError
from gitops.locks import SourceBusy
from gitops.models import (
    ApplyIntent,
    ClusterAudit,
    ManagedObject,
    Rollout,
    Source,
    SourceAudit,
    admin_settings,
)
from gitops.models import Cluster as ClusterRecord
from gitops.record.audit import Actor, audit_record
from gitops.redaction import redact
from gitops.rollout.decisions import WAIVE_PERMISSION as FORGET_PERMISSION
from gitops.rollout.decisions import decision_locks, rollback_waive
from gitops.vocabulary import ClusterAuditAction, SourceAuditAction

PROBE_SECONDS = 3.0

log = logging.getLogger("gitops.clusters")


@dataclass(frozen=True)
class Credentials:
    """Where a registration's credentials live: a kubeconfig path and context, or the in-cluster account."""

    kubeconfig: str | None = ""  # None: the kubeconfig registered (another context of it)
    context: str = ""
    in_cluster: bool = False


def cluster_add(
    *,
    name: str,
    actor: Actor,
    kubeconfig: str = "",
    context: str = "",
    in_cluster: bool = False,
    allow_unverified_tls: bool = False,
) -> ClusterRecord:
    """Registers a cluster by where its credentials live; checks they load, never stores them. The
    clusters' audit trail gets a row, in the same transaction."""
    if name == settings.SLUICE_CLUSTER_NAME:
        raise PermanentError(
            f"{name!r} is the default cluster (the one KUBECONFIG names, SLUICE_CLUSTER_NAME); "
            "it is always registered"
        )
    record = _registration(
        name, Credentials(kubeconfig, context, in_cluster), allow_unverified_tls=allow_unverified_tls
    )
    unverified, _ = _check_loads(record)
    record.identity = _identity_if_it_answers(record)
    _refuse_another_cluster_under_kept_state(name, record.identity)
    message = "its server's certificate is not checked (allowed)" if unverified else ""
    try:
        with transaction.atomic():
            record.save()
            _cluster_audit(name, ClusterAuditAction.ADD, actor, before=None, after=record, message=message)
    except IntegrityError as exc:
        raise PermanentError(f"a cluster named {name!r} is already registered") from exc
    clients.refresh()
    probes_forget(name)
    return record


def _registration(name: str, credentials: Credentials, *, allow_unverified_tls: bool) -> ClusterRecord:
    """A registration's row, not saved: refused when the credentials' reference is not one, or its
    kubeconfig is not here."""
    kubeconfig, context, in_cluster = (
        credentials.kubeconfig or "",
        credentials.context,
        credentials.in_cluster,
    )
    if in_cluster == bool(kubeconfig):
        raise PermanentError("give either --kubeconfig PATH (with an optional --context) or --in-cluster")
    if context and in_cluster:
        raise PermanentError("--context goes with --kubeconfig, not --in-cluster")
    # Absolute, its symlinks kept: a Secret mounted in a pod is a link into a dated directory the kubelet
    # replaces at each update (and names apart in every pod); resolved, the stored path went with it.
    path = os.path.abspath(os.path.expanduser(kubeconfig)) if kubeconfig else ""
    record = ClusterRecord(
        name=name,
        kubeconfig=path,
        context=context,
        in_cluster=in_cluster,
        allow_unverified_tls=allow_unverified_tls,
    )
    try:
        record.full_clean(validate_unique=False)
    except DjangoValidationError as exc:
        raise PermanentError("; ".join(exc.messages)) from exc
    if path and not Path(path).is_file():
        raise PermanentError(f"no kubeconfig file at {path}")
    return record


def _identity_if_it_answers(record: ClusterRecord) -> str:
    """The cluster's identity as the registration reaches it now, kept so that a kubeconfig rewritten to
    reach another cluster is refused (``clients._another_cluster``); "" when it does not answer here (it is
    registered all the same: ``update-cluster NAME --record-identity`` records it later)."""
    try:
        return _identity_through(record)
    except GitopsError as exc:
        log.warning("cluster %s: its identity is not recorded: %s", record.name, exc)
        return ""


def _check_loads(record: ClusterRecord) -> tuple[bool, str]:
    """Whether the registration reaches its server unverified, and the server (redacted); refused when its
    credentials do not load, or when it does and that is not allowed. Loading reads the kubeconfig (and
    checks the context) without calling the server."""
    path, context = record.kubeconfig, record.context
    with Cluster(path or None, context=context or None, name=record.name) as loaded:
        if not loaded.has_credentials:
            raise PermanentError(
                f"the kubeconfig {path or '(in-cluster)'} (context {context or 'current'}) loads no "
                "credentials: no token, client certificate or user; an exec plugin it names may have "
                "failed (is its command installed where the workers run?)"
            )
        if loaded.unverified and not record.allow_unverified_tls:
            raise PermanentError(
                f"the kubeconfig reaches {redact(loaded.server)} without checking its certificate "
                "(insecure-skip-tls-verify, or plain http): Sluice would send the cluster's credentials "
                "to whoever answers there; give it the cluster's CA, or --allow-unverified-tls"
            )
        return bool(loaded.unverified), redact(loaded.server)


@dataclass(frozen=True)
class ClusterUpdate:
    """What ``cluster_update`` did, for its caller to say."""

    record: ClusterRecord  # the registration as it is now
    changed: bool  # False: it already was so, and nothing was written
    # Whether its kubeconfig reaches the server unverified now, loaded here; None: not known here (the
    # file is not on this host, or it does not load).
    unverified_now: bool | None
    server: str = ""  # where it reaches, redacted; "" when not known here
    # With new credentials: where they were and are (``credentials_ref``), and the cluster's identity
    # (``Cluster.identity``) both reached.
    moved_from: str = ""
    identity: str = ""
    # With --record-identity: the identity recorded before ("" none); None when it was not asked.
    recorded_from: str | None = None


def cluster_update(
    name: str,
    *,
    actor: Actor,
    allow_unverified_tls: bool | None = None,
    credentials: Credentials | None = None,
    record_identity: bool = False,
    clear_identity: bool = False,
    rebuilt: bool = False,
) -> ClusterUpdate:
    """Grants or revokes a registered cluster's ``--allow-unverified-tls``, or moves its credentials, in
    place: removing and adding it again is refused while it is in use, which is when it matters.

    New credentials (another kubeconfig or context, or the in-cluster account) are taken only when they
    reach the same cluster as the registration's: its recorded identity, or else the one its current
    credentials answer with (``_same_cluster``). Another cluster would inherit Sluice's inventory, pending
    changes and owed rollbacks of this one, and have them pruned, applied and rolled back there.
    ``record_identity`` records the identity the registration reaches now (``_identity_record``; one that
    replaces another needs ``rebuilt``); ``clear_identity`` forgets it (``_identity_clear``).

    Granting loads the kubeconfig first, as ``add-cluster`` does; revoking never needs it (the file may be
    mounted only where the workers run). Every process reads the registry again at each pass
    (``clients.refresh``), and the reference and the allowance are part of a client's fingerprint: its
    next client is built again, and refused when it reaches the server unverified without the allowance.
    The clusters' audit trail gets a row, in the same transaction; none when nothing changes."""
    if record_identity and clear_identity:
        raise PermanentError("give --record-identity or --clear-identity, not both")
    if rebuilt and not record_identity:
        raise PermanentError("--rebuilt goes with --record-identity")
    identity = record_identity or clear_identity
    _refuse_update(name, allow_unverified_tls is not None, credentials is not None, identity)
    seen = ClusterRecord.objects.filter(name=name).first()
    if seen is None:
        raise PermanentError(f"no cluster named {name!r}")
    if record_identity:
        return _identity_record(seen, actor, rebuilt=rebuilt)
    if clear_identity:
        return _identity_clear(seen, actor)
    allowed = seen.allow_unverified_tls if allow_unverified_tls is None else allow_unverified_tls
    if credentials is not None and credentials.kubeconfig is None and not credentials.in_cluster:
        credentials = dataclasses.replace(credentials, kubeconfig=seen.kubeconfig)
    wanted = _registration(name, credentials, allow_unverified_tls=allowed) if credentials else None
    # Loaded, and the cluster asked, before the row is locked: an exec plugin may take seconds.
    if wanted is not None and _credentials_of(wanted) != _credentials_of(seen):
        return _credentials_move(seen, wanted, actor)
    return _allowance_change(seen, allowed, actor)


def _refuse_update(name: str, allowance: bool, credentials: bool, identity: bool) -> None:
    """Why ``update-cluster`` was asked for nothing it may do, raised."""
    if name == settings.SLUICE_CLUSTER_NAME:
        raise PermanentError(
            f"{name!r} is the default cluster (KUBECONFIG): it is not registered, and its kubeconfig is "
            "used as the deployment gives it"
        )
    if not (allowance or credentials or identity):
        raise PermanentError(
            "nothing to change: give --[no-]allow-unverified-tls, new credentials, --record-identity or "
            "--clear-identity"
        )
    if identity and (allowance or credentials):
        raise PermanentError(
            "--record-identity or --clear-identity goes alone (new credentials record theirs)"
        )


def _allowance_change(seen: ClusterRecord, allowed: bool, actor: Actor) -> ClusterUpdate:
    """The registration's allowance granted or revoked, in place and audited; unchanged when it is so."""
    name = seen.name
    unverified, server = _granting_loads(seen) if allowed else _unverified_now(seen)
    with transaction.atomic():
        # Locked until the change commits: a removal or a forget at the same time waits for it, and the
        # audit row's "before" is what was replaced.
        record = ClusterRecord.objects.select_for_update().filter(name=name).first()
        if record is None:
            raise PermanentError(f"no cluster named {name!r} (removed meanwhile)")
        if (record.pk, _credentials_of(record)) != (seen.pk, _credentials_of(seen)):
            raise PermanentError(
                f"cluster {name!r} was removed and registered again meanwhile; look at it and try again"
            )
        if record.allow_unverified_tls == allowed:
            return ClusterUpdate(record, changed=False, unverified_now=unverified, server=server)
        before = copy.copy(record)
        record.allow_unverified_tls = allowed
        record.save(update_fields=["allow_unverified_tls"])
        message = _allowance_text(allowed, unverified)
        _cluster_audit(name, ClusterAuditAction.UPDATE, actor, before=before, after=record, message=message)
    clients.refresh()
    probes_forget(name)
    return ClusterUpdate(record, changed=True, unverified_now=unverified, server=server)


def _credentials_move(seen: ClusterRecord, wanted: ClusterRecord, actor: Actor) -> ClusterUpdate:
    """The registration moved to ``wanted``'s credentials (and allowance), once they load and reach the
    same cluster as ``seen``'s; refused otherwise, or when the row changed since it was read."""
    unverified, server = _check_loads(wanted)
    identity = _same_cluster(seen, wanted)
    with transaction.atomic():
        # Locked until the change commits, as for an allowance: a removal or forget waits for it.
        record = ClusterRecord.objects.select_for_update().filter(name=seen.name).first()
        if record is None:
            raise PermanentError(f"no cluster named {seen.name!r} (removed meanwhile)")
        if _as_read(record) != _as_read(seen):
            # Also an allowance revoked meanwhile: taken from the row read before, it would be granted again.
            raise PermanentError(
                f"cluster {seen.name!r} was removed and registered again, moved, or its allowance changed, "
                "meanwhile; look at it and try again"
            )
        before = copy.copy(record)
        record.kubeconfig, record.context, record.in_cluster = _credentials_of(wanted)
        record.allow_unverified_tls = wanted.allow_unverified_tls
        record.identity = identity  # the same cluster's: recorded now if it was not
        record.save(update_fields=["kubeconfig", "context", "in_cluster", "allow_unverified_tls", "identity"])
        message = (
            f"credentials moved from {before.credentials_ref} to {record.credentials_ref}: the same "
            f"cluster (kube-system namespace uid {identity})"
        )
        if before.allow_unverified_tls != record.allow_unverified_tls:
            message += "; " + _allowance_text(record.allow_unverified_tls, unverified)
        _cluster_audit(
            seen.name, ClusterAuditAction.UPDATE, actor, before=before, after=record, message=message
        )
    clients.refresh()
    probes_forget(seen.name)
    return ClusterUpdate(
        record,
        changed=True,
        unverified_now=unverified,
        server=server,
        moved_from=before.credentials_ref,
        identity=identity,
    )


def _identity_clear(seen: ClusterRecord, actor: Actor) -> ClusterUpdate:
    """Forgets the identity recorded for the registration: its clients are then used without asking which
    cluster they reach. For credentials narrowed on purpose so that they may no longer read kube-system,
    whose clients are refused while an identity is recorded; ``--record-identity`` records it again."""
    with transaction.atomic():
        record = ClusterRecord.objects.select_for_update().filter(name=seen.name).first()
        if record is None:
            raise PermanentError(f"no cluster named {seen.name!r}")
        if not record.identity:
            return ClusterUpdate(record, changed=False, unverified_now=None, recorded_from="")
        before = copy.copy(record)
        record.identity = ""
        record.save(update_fields=["identity"])
        message = f"identity cleared (was kube-system namespace uid {before.identity}): not checked any more"
        _cluster_audit(
            seen.name, ClusterAuditAction.UPDATE, actor, before=before, after=record, message=message
        )
    clients.refresh()
    return ClusterUpdate(record, changed=True, unverified_now=None, recorded_from=before.identity)


def _identity_record(seen: ClusterRecord, actor: Actor, *, rebuilt: bool = False) -> ClusterUpdate:
    """Records the identity of the cluster the registration reaches now: for one registered before
    identities were kept (or while it did not answer), and, with ``rebuilt``, for a cluster rebuilt under
    the same name (a new kube-system namespace), whose client is refused until then. Refused when it does
    not answer, and when it would replace another identity without ``rebuilt``: the refusal it mends
    says what a kubeconfig rewritten to another cluster looks like, and recording that cluster would let
    Sluice prune, apply and roll back there what its inventory, pending changes and owed rollbacks say of
    this one."""
    try:
        identity = _identity_through(seen)
    except GitopsError as exc:
        raise PermanentError(
            f"cluster {seen.name} ({seen.credentials_ref}) does not answer ({exc}); nothing recorded"
        ) from exc
    with transaction.atomic():
        record = ClusterRecord.objects.select_for_update().filter(name=seen.name).first()
        if record is None or _as_read(record) != _as_read(seen):
            # Removed and added again, moved, an allowance revoked (the identity was read under it), or
            # another record of it meanwhile.
            raise PermanentError(f"cluster {seen.name!r} changed meanwhile; look at it again")
        if record.identity == identity:  # said as such ("already ..."), not as an unchanged allowance
            return ClusterUpdate(
                record, changed=False, unverified_now=None, identity=identity, recorded_from=identity
            )
        if record.identity and not rebuilt:
            raise PermanentError(
                f"cluster {seen.name} ({seen.credentials_ref}) now reaches another cluster (kube-system "
                f"namespace uid {identity}) than the one recorded ({record.identity}); nothing recorded. If "
                f"{seen.name} was rebuilt under the same name: gitops update-cluster {seen.name} "
                "--record-identity --rebuilt; if its kubeconfig points elsewhere, point it back"
            )
        before = copy.copy(record)
        record.identity = identity
        record.save(update_fields=["identity"])
        message = f"identity recorded: kube-system namespace uid {identity} (was {before.identity or 'none'})"
        _cluster_audit(
            seen.name, ClusterAuditAction.UPDATE, actor, before=before, after=record, message=message
        )
    clients.refresh()
    return ClusterUpdate(
        record, changed=True, unverified_now=None, identity=identity, recorded_from=before.identity
    )


def _same_cluster(current: ClusterRecord, moved: ClusterRecord) -> str:
    """The cluster's identity through the new credentials, which must answer with the registration's: the
    one recorded (``ClusterRecord.identity``), or else the one its current credentials answer with."""
    try:
        new = _identity_through(moved)
    except GitopsError as exc:
        raise PermanentError(
            f"the new credentials ({moved.credentials_ref}) do not answer ({exc}); nothing changed"
        ) from exc
    try:
        old = current.identity or _identity_through(current)
    except GitopsError as exc:
        raise PermanentError(
            f"cluster {current.name}'s current credentials ({current.credentials_ref}) do not answer ({exc}),"
            " so Sluice cannot tell the new ones reach the same cluster; nothing changed. Rotated "
            "credentials: rewrite the kubeconfig file in place, its path kept (every process reads it "
            "again); a cluster gone for good: remove-cluster --forget"
        ) from exc
    if new != old:
        raise PermanentError(
            f"the new credentials reach another cluster (kube-system namespace uid {new}, not {old}): "
            f"Sluice's inventory, pending changes and owed rollbacks of {current.name} would be taken for "
            "that cluster's; nothing changed. Register it under a name of its own (add-cluster)"
        )
    return new


def _identity_through(record: ClusterRecord) -> str:
    """``Cluster.identity`` through a registration's credentials; refused, without calling, where they
    would reach the server unverified and the registration does not allow that."""
    with Cluster(record.kubeconfig or None, context=record.context or None, name=record.name) as loaded:
        if loaded.unverified and not record.allow_unverified_tls:
            raise PermanentError(
                "they reach the server without checking its certificate, which is not allowed"
            )
        return loaded.identity(timeout=PROBE_SECONDS)


def _as_read(record: ClusterRecord) -> tuple[object, ...]:
    """What a change made from a row read before its lock must find unchanged under it."""
    return record.pk, _credentials_of(record), record.allow_unverified_tls, record.identity


def _credentials_of(record: ClusterRecord) -> tuple[str, str, bool]:
    return record.kubeconfig, record.context, record.in_cluster


def _granting_loads(record: ClusterRecord) -> tuple[bool, str]:
    """Whether the registration, granted the allowance, reaches its server unverified now, and where;
    refused, as by ``add-cluster``, when its kubeconfig is not here or loads no credentials."""
    if record.kubeconfig and not Path(record.kubeconfig).is_file():
        raise PermanentError(
            f"no kubeconfig file at {record.kubeconfig} here: the allowance is granted where it loads"
        )
    granted = copy.copy(record)
    granted.allow_unverified_tls = True
    return _check_loads(granted)


def _unverified_now(record: ClusterRecord) -> tuple[bool | None, str]:
    """Whether the registration reaches its server unverified now, and where, as far as this host can
    tell: (None, "") where its kubeconfig is not here or does not load."""
    if record.kubeconfig and not Path(record.kubeconfig).is_file():
        return None, ""
    try:
        with Cluster(record.kubeconfig or None, context=record.context or None, name=record.name) as loaded:
            return bool(loaded.unverified), redact(loaded.server)
    except GitopsError:
        return None, ""


def _allowance_text(allowed: bool, unverified: bool | None) -> str:
    """The audit row's message: what the change lets through, or stops, and how the kubeconfig reached
    its server when it was made (unverified now, verified now, or not known where the command ran)."""
    if allowed:
        text = "granted: its kubeconfig may reach the server without checking its certificate"
        if unverified is not None:
            text += "; it does so now" if unverified else "; it checks the certificate now"
        return text
    text = "revoked: a kubeconfig that reaches the server without checking its certificate is refused"
    return text + ("; it does so now: the cluster is refused" if unverified else "")


def cluster_remove(name: str, *, actor: Actor) -> None:
    """Removes a registered cluster, unless a source still targets it, holds objects there, owes it a
    change or a rollback, or has an active rollout that wrote there: Sluice would lose track of what it
    wrote there. The passes of every source that may write there are held off meanwhile (their reconcile
    locks, ``_may_write_there``), and everything is checked again under them. The clusters' audit trail
    gets a row, in the same transaction."""
    if name == settings.SLUICE_CLUSTER_NAME:
        raise PermanentError(f"{name!r} is the default cluster; it cannot be removed")
    if not ClusterRecord.objects.filter(name=name).exists():
        raise PermanentError(f"no cluster named {name!r}")
    _refuse_removal(name)  # at once, without waiting for any pass
    locked = _may_write_there(name)
    with decision_locks(locked), transaction.atomic():
        # Checked again under the locks: a pass under way when the first checks ran may have validated a
        # revision that names the cluster, and written there, since. No pass that may write there runs
        # until the removal commits: one that read the registry before it has ended, and the next reads
        # it afresh, rejects a revision that names the cluster, and writes nothing there.
        _refuse_removal(name)
        _busy_unless_held(name, locked)
        # Locked as it is read: an update-cluster under way commits first, and the audit row's "before"
        # is the registration removed.
        record = ClusterRecord.objects.select_for_update().filter(name=name).first()
        # Deleted by the query's count: two removals at once leave one audit row, the other is refused.
        if record is None or not ClusterRecord.objects.filter(pk=record.pk).delete()[0]:
            raise PermanentError(f"no cluster named {name!r}")
        _cluster_audit(name, ClusterAuditAction.REMOVE, actor, before=record, after=None)
    clients.forget([name])
    clients.refresh()
    probes_forget(name)


def _refuse_removal(name: str) -> None:
    """Why ``remove-cluster`` (without ``--forget``) may not remove the cluster now, raised."""
    _refuse_targeted(name)
    holding = _objects_by_source(name)
    if holding:
        held = ", ".join(f"{source} ({count})" for source, count in sorted(holding.items()))
        raise PermanentError(
            f"cluster {name!r} still holds objects Sluice applied for {held}; prune them first"
            " (a cluster gone for good: remove-cluster --forget)"
        )
    owed = Rollout.objects.filter(rollback_pending_clusters__contains=[name]).values_list("pk", flat=True)
    pending = ApplyIntent.objects.filter(cluster=name, status=ApplyIntent.Status.PENDING).exists()
    if owed or pending:
        rollouts = ", ".join(str(pk) for pk in owed) or "a pending change"
        raise PermanentError(
            f"cluster {name!r} is still owed a change or a rollback ({rollouts}); wait for it"
            " (a cluster gone for good: remove-cluster --forget)"
        )
    # An active rollout that pruned its last object there holds nothing there, yet its rollback (an
    # abort, a failed analysis) writes there again: to a cluster nobody knows any more.
    _refuse_active_rollouts_there(name)


@dataclass
class Forgotten:
    """What forgetting a cluster let go of."""

    objects: dict[str, int] = field(default_factory=dict)  # source name: objects Sluice applied there
    rollbacks: list[int] = field(default_factory=list)  # rollouts that owed it a rollback
    pending: int = 0  # changes never applied there


def cluster_forget(name: str, *, actor: Actor, reason: str) -> Forgotten:
    """Removes a cluster that will never answer again (decommissioned, burned down), with what Sluice
    kept about it: the objects it applied there (the inventory: nobody can prune them now), the
    rollbacks rollouts owe it (waived, with ``reason``) and the changes still pending there (dropped).
    Nothing is asked of the cluster. Refused for the default cluster, while a source's policy still
    targets it (change the policy first) and while an active rollout has written there (let it end,
    or abort it). Each source concerned gets an entry in its audit trail; the passes of every source that
    may write there are held off meanwhile (their reconcile locks, ``_may_write_there``). A name no
    longer registered is forgotten too while Sluice keeps something there (``_kept_there``). Of two
    forgets at once, or a forget beside a removal, the second is refused (``_locked_as_seen``)."""
    if actor.user is not None and not (actor.user.is_active and actor.user.has_perm(FORGET_PERMISSION)):
        raise PermissionDenied(f"{actor.name} may not forget a cluster: administrators only")
    reason = reason.strip()
    if not reason:
        raise PermanentError("say why the cluster is forgotten (--reason): it is recorded")
    if name == settings.SLUICE_CLUSTER_NAME:
        raise PermanentError(f"{name!r} is the default cluster; it cannot be forgotten")
    registered = ClusterRecord.objects.filter(name=name).exists()
    if not registered and not _kept_there(name):
        raise PermanentError(f"no cluster named {name!r}")
    _refuse_targeted(name)
    locked = _may_write_there(name)
    with decision_locks(locked), transaction.atomic():
        record = _locked_as_seen(name, registered=registered)  # None: no longer registered
        # Checked again under the locks: a pass that ended meanwhile may have changed either.
        _refuse_targeted(name)
        _busy_unless_held(name, locked)
        _refuse_active_rollouts_there(name)
        forgotten = _forget(name, actor, f"cluster {name} forgotten: {reason}")
        # Deleted by the query's count, as a removal is: the row is locked, so this only guards.
        if record is not None and not ClusterRecord.objects.filter(pk=record.pk).delete()[0]:
            raise PermanentError(f"no cluster named {name!r} (removed meanwhile)")
        message = _forgotten_text(reason, forgotten)
        _cluster_audit(name, ClusterAuditAction.FORGET, actor, before=record, after=None, message=message)
    clients.forget([name])
    clients.refresh()
    return forgotten


def _locked_as_seen(name: str, *, registered: bool) -> ClusterRecord | None:
    """The cluster's row, locked until the transaction ends, when it is still as ``cluster_forget`` saw
    it before waiting for the locks: registered, or a name Sluice only keeps things about. A forget or a
    removal of a cluster that takes no reconcile lock (nothing may write there) runs beside this one: both
    read the row, both deleted it, and each wrote a "forget" row, the second with nothing before. The
    second one now waits here for the first to end, and is refused."""
    record = ClusterRecord.objects.select_for_update().filter(name=name).first()
    if registered and record is None:
        raise PermanentError(f"no cluster named {name!r} (removed or forgotten meanwhile)")
    if not registered and record is not None:
        raise PermanentError(
            f"cluster {name!r} was registered meanwhile; look at it again before forgetting it"
        )
    if record is None and not _kept_there(name):
        # Another forget of the name let go of what Sluice kept there while this one waited for its locks.
        raise PermanentError(f"no cluster named {name!r}, and Sluice keeps nothing there any more")
    return record


def _cluster_audit(
    name: str,
    action: ClusterAuditAction,
    actor: Actor,
    *,
    before: ClusterRecord | None,
    after: ClusterRecord | None,
    message: str = "",
) -> None:
    ClusterAudit.objects.create(
        cluster=name,
        action=action,
        actor=actor.name[:150],
        via=actor.via,
        before=before.registered_settings() if before is not None else None,
        after=after.registered_settings() if after is not None else None,
        message=message,
    )


def _forgotten_text(reason: str, forgotten: Forgotten) -> str:
    objects = ", ".join(f"{source} ({count})" for source, count in sorted(forgotten.objects.items()))
    return (
        f"{reason}; objects no longer managed there: {objects or 'none'}; rollbacks waived: "
        f"{', '.join(map(str, forgotten.rollbacks)) or 'none'}; pending changes dropped: {forgotten.pending}"
    )


def _sources_concerned(name: str) -> QuerySet[Source]:
    """The sources with objects, pending changes or an owed rollback in the cluster."""
    return Source.objects.filter(
        Q(managed_objects__cluster=name)
        | Q(intents__cluster=name, intents__status=ApplyIntent.Status.PENDING)
        | Q(rollouts__rollback_pending_clusters__contains=[name])
    ).distinct()


def _may_write_there(name: str) -> list[Source]:
    """The sources whose passes may write to cluster ``name``, whose reconcile locks a change to the
    registry holds (``_may_write_there_ids``)."""
    return list(Source.objects.filter(pk__in=_may_write_there_ids(name)).order_by("pk"))


def _may_write_there_ids(name: str) -> set[int]:
    """Those concerned (objects, pending changes or an owed rollback there), those with an active rollout
    that wrote there (its rollback writes there again), and those whose scope reaches the cluster now or
    in any scope their audit trail records. The scope counts, not the policy: a pass under way validates a
    new revision, which may name the cluster, with the registry it read as it began and the scope it read
    then, perhaps before an administrator narrowed it; and it writes there before anything else shows it."""
    concerned = set(_sources_concerned(name).values_list("pk", flat=True))
    active = Rollout.objects.filter(phase__in=Rollout.ACTIVE_PHASES, intents__cluster=name)
    scopes: dict[int, list[Any]] = {}
    for pk, allowed in Source.objects.values_list("pk", "allowed_namespaces"):
        scopes.setdefault(pk, []).append(allowed)
    # Only the rows that changed a scope, each distinct scope once: the trail is append-only and never
    # pruned, and read whole (every row's settings) it took seconds, twice, the second time under the locks.
    audited = SourceAudit.objects.filter(
        source__deleted_at__isnull=True, changed__contains=["allowed_namespaces"]
    ).order_by()
    fields = ("source_id", "before__allowed_namespaces", "after__allowed_namespaces")
    for pk, before, after in audited.values_list(*fields).distinct():
        scopes.setdefault(pk, []).extend((before, after))
    default = settings.SLUICE_CLUSTER_NAME
    reaching = {
        pk for pk, globs in scopes.items() if any(scope_reaches(each, name, default) for each in globs)
    }
    return concerned | set(active.values_list("source_id", flat=True)) | reaching


def scope_reaches(globs: Any, cluster: str, default_cluster: str) -> bool:
    """Whether an administrator's ``--allow-namespace`` globs (a list, as stored) let a source write to
    some namespace of ``cluster``; anything else stored there reaches nothing."""
    kept = [glob for glob in globs if isinstance(glob, str)] if isinstance(globs, list) else []
    scope = AdminScope.of(kept, (), default_cluster=default_cluster)
    return bool(scope.namespaces) and scope.cluster_problem(cluster) is None


def _busy_unless_held(name: str, locked: list[Source]) -> None:
    """Raises ``SourceBusy`` when a source not among those held may write to the cluster by now: a pass
    wrote there, an administrator widened a scope, or a source was added, since the locks were chosen."""
    came = _may_write_there_ids(name) - {source.pk for source in locked}
    if came:
        names = ", ".join(sorted(Source.objects.filter(pk__in=came).values_list("name", flat=True)))
        raise SourceBusy(
            f"source(s) {names} may write to cluster {name!r} since this began; try again in a moment"
        )


def _refuse_another_cluster_under_kept_state(name: str, identity: str) -> None:
    """Refuses to register ``name`` while Sluice keeps state under it (left by a removal while a pass
    wrote there, or a default cluster renamed), unless the cluster it reaches is the one last registered
    under that name, by identity. Another cluster inherited the inventory, pending changes and owed
    rollbacks (a rollback created the old cluster's content there), and its own identity check passed."""
    if not _kept_there(name):
        return
    # The newest identity the trail recorded for the name (what an add or an update left, what a removal
    # took): one registered while it did not answer, or cleared since, has rows without one.
    rows = ClusterAudit.objects.filter(cluster=name).order_by("-at", "-id").values_list("after", "before")
    recorded = [str((after or removed or {}).get("identity") or "") for after, removed in rows]
    before = next((each for each in recorded if each), "")
    if identity and identity == before:
        return  # the same cluster, back under its name: what Sluice kept there is its own
    why = "it does not answer" if not identity else f"its identity {identity} is not {before or 'known'}"
    raise PermanentError(
        f"Sluice still keeps objects, pending changes or an owed rollback under cluster {name!r}, and the "
        f"cluster this reaches cannot be told to be the one they belong to ({why}); let them go first "
        f"(gitops remove-cluster {name} --forget --reason TEXT), or pick another name"
    )


def _kept_there(name: str) -> bool:
    """Whether Sluice keeps anything about cluster ``name``: objects, pending changes, an owed rollback.
    A cluster removed while a pass wrote there (until 2026-12-06 a removal did not wait for it) left
    them, and nothing else could let them go."""
    return ManagedObject.objects.filter(cluster=name).exists() or _sources_concerned(name).exists()


def _refuse_active_rollouts_there(name: str) -> None:
    active = Rollout.objects.filter(phase__in=Rollout.ACTIVE_PHASES, intents__cluster=name).distinct()
    listed = ", ".join(str(pk) for pk in active.values_list("pk", flat=True))
    if listed:
        raise PermanentError(
            f"rollout(s) {listed} wrote to cluster {name!r} and are still active; let them end, or abort them"
        )


def _forget(name: str, actor: Actor, why: str) -> Forgotten:
    forgotten = Forgotten()
    objects = _objects_by_source(name)
    for source in _sources_concerned(name).order_by("name"):
        owing = Rollout.objects.filter(source=source, rollback_pending_clusters__contains=[name])
        waived = [
            rollback_waive(pk, cluster=name, actor=actor.name, reason=why).pk
            for pk in owing.order_by("id").values_list("pk", flat=True)
        ]
        dropped = ApplyIntent.drop_pending(ApplyIntent.objects.filter(source=source, cluster=name))
        count = objects.get(source.name, 0)
        settings_now = admin_settings(source)
        audit_record(
            source,
            SourceAuditAction.FORGET_CLUSTER,
            actor,
            before=settings_now,
            after=settings_now,
            message=f"{why}; Sluice no longer manages the {count} object(s) it applied there, "
            f"waived the rollback(s) of rollout(s) {', '.join(map(str, waived)) or 'none'} "
            f"and dropped {dropped} pending change(s)",
        )
        forgotten.rollbacks.extend(waived)
        forgotten.pending += dropped
    ManagedObject.objects.filter(cluster=name).delete()  # the inventory's version moves with it
    forgotten.objects = objects
    return forgotten


def _refuse_targeted(name: str) -> None:
    targeting = sorted(Source.objects.filter(target_clusters__contains=[name]).values_list("name", flat=True))
    if targeting:
        raise PermanentError(
            f"cluster {name!r} is targeted by {', '.join(targeting)}; change their targets first"
        )


def _objects_by_source(cluster: str) -> dict[str, int]:
    rows = ManagedObject.objects.filter(cluster=cluster).values("source__name").annotate(n=Count("id"))
    return {row["source__name"]: row["n"] for row in rows}


@dataclass
class ClusterStatus:
    """A cluster as `gitops clusters` and the pages show it; credentials only by reference."""

    name: str
    default: bool
    credentials: str
    server: str = ""
    reachable: bool = False
    version: str = ""
    error: str = ""
    sources: list[str] = field(default_factory=list)  # the sources whose policy targets it
    objects: int = 0  # objects Sluice applied there

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clusters_status(*, probe: bool = True) -> list[ClusterStatus]:
    """Every cluster, the default one first; ``probe`` asks each for its version, side by side, bounded."""
    default = settings.SLUICE_CLUSTER_NAME
    rows = [
        ClusterStatus(default, True, settings.KUBECONFIG or "in-cluster service account"),
        *(
            ClusterStatus(record.name, False, record.credentials_ref)
            for record in ClusterRecord.objects.exclude(name=default)
        ),
    ]
    targets: dict[str, list[str]] = {}
    for source, clusters in Source.objects.values_list("name", "target_clusters"):
        for cluster in clusters or [default]:
            targets.setdefault(cluster, []).append(source)
    objects = dict(
        ManagedObject.objects.values("cluster").annotate(n=Count("id")).values_list("cluster", "n")
    )
    for row in rows:
        row.sources = sorted(targets.get(row.name, []))
        row.objects = objects.get(row.name, 0)
    if probe:
        # The registry as it is now, not as this process last read it (a web process reads it no other way):
        # a cluster another process removed and registered again, with another kubeconfig or context, was
        # probed through the old one, and its answer shared as the new one's.
        _probes_renewed(clients.refresh())
        # Not a with-block: leaving one waits for every thread, and a silent cluster would hold the command.
        pool = ThreadPoolExecutor(max_workers=len(rows))
        try:
            for row, (server, version, error) in zip(
                rows, pool.map(_probe_shared, [r.name for r in rows]), strict=True
            ):
                # For display (pages, `gitops clusters`, its JSON): a server URL may carry credentials.
                row.server, row.version, row.error = redact(server), version, redact(error)
                row.reachable = not error
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    return rows


# A probe's answer serves every request for this long: the clusters page and the API are open to any
# viewer, and a silent cluster holds a probe for seconds, so a few requests in a loop could hold every web
# thread (the webhook's too). One probe per cluster at a time: while it runs, other requests get the last
# answer, however old; only the first probe of a cluster in a process is waited for.
PROBE_SHARED_SECONDS = 10.0
_probed: dict[str, tuple[float, tuple[str, str, str]]] = {}  # name -> (good until, answer)
_probing: dict[str, threading.Lock] = {}
_probing_lock = threading.Lock()


def _probe_shared(name: str) -> tuple[str, str, str]:
    """``_probe``, answered from a probe of the last ``PROBE_SHARED_SECONDS`` where there was one."""
    with _probing_lock:
        lock = _probing.setdefault(name, threading.Lock())
    probed = _probed.get(name)
    if probed is not None and time.monotonic() < probed[0]:
        return probed[1]
    if probed is None:
        lock.acquire()  # the cluster's first probe here: nothing older to answer with
    elif not lock.acquire(blocking=False):
        return probed[1]  # another request is probing it: the last answer meanwhile
    try:
        probed = _probed.get(name)
        if probed is not None and time.monotonic() < probed[0]:
            return probed[1]
        answer = _probe(name)
        _probed[name] = (time.monotonic() + PROBE_SHARED_SECONDS, answer)
        return answer
    finally:
        lock.release()


def probes_forget(name: str) -> None:
    """A cluster added, changed or removed: its next probe is a fresh one."""
    _probed.pop(name, None)


# The registration each registered cluster's shared answer was asked under, as ``clusters_status`` last
# read the registry.
_probed_as: dict[str, ClusterRef] = {}


def _probes_renewed(registered: Mapping[str, ClusterRef]) -> None:
    """Forgets the shared answers of the clusters registered otherwise since the last read (removed, or
    removed and added again, perhaps by another process): they told of another registration."""
    for name in set(_probed_as) | set(registered):
        now = registered.get(name)
        if _probed_as.get(name) == now:
            continue
        probes_forget(name)
        if now is None:
            _probed_as.pop(name, None)
        else:
            _probed_as[name] = now


def _probe(name: str) -> tuple[str, str, str]:
    """(server URL, version, why it is unreachable or "")."""
    try:
        client = clients.get(name)
    except GitopsError as exc:
        return "", "", str(exc)
    try:
        version = client.server_version(timeout=PROBE_SECONDS)
    except GitopsError as exc:
        return client.server, "", str(exc)
    return client.server, version.git_version, ""
