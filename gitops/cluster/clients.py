"""Connections to clusters: one client per cluster per process, shared by its threads.

The default cluster is the one ``KUBECONFIG`` names (or the in-cluster service
account), under the name ``SLUICE_CLUSTER_NAME``; other clusters are registered
rows (``gitops.models.Cluster``) that say where their credentials live. The
registry is read once per reconcile (``refresh``), and a client is built again
when its reference changes, including when its kubeconfig file is rewritten (a
rotated token), so nothing a process holds outlives the credentials it came from.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

import yaml
from django.conf import settings

from gitops import metrics
from gitops.cluster import pools
from gitops.cluster.client import Cluster, NotFoundError, ReadForbidden
from gitops.errors import GitopsError, PermanentError, TemporaryError
from gitops.models import Cluster as ClusterRecord

log = logging.getLogger("gitops.cluster")


class UnknownClusterError(PermanentError):
    """A name that is neither the default cluster nor a registered one."""


class ClusterIdentityError(PermanentError):
    """A registered cluster's kubeconfig reaches another cluster than the one it was registered for."""


class UnverifiedClusterError(PermanentError):
    """A registered cluster whose kubeconfig reaches its server without checking its certificate, which
    its registration did not allow (``add-cluster --allow-unverified-tls``)."""


# How long a process takes a cluster that just failed to answer at its word, without asking it again:
# a silent cluster then costs one timeout per process every few seconds, not one per source and pass.
UNREACHABLE_MEMORY_SECONDS = 5.0
# How long a new client's first question (which cluster it reaches) may take: it holds up that build.
IDENTITY_SECONDS = 3.0
# How long a client refused for reaching another cluster stays refused without being asked again, its
# files unchanged: what answers at an address can change (a misrouted name), unlike the files.
IDENTITY_REFUSAL_SECONDS = 60.0
# Idle connections a client keeps: enough for a worker's parallel applies (the live cache wants more).
DEFAULT_POOL_SIZE = 32


@dataclass(frozen=True)
class ClusterRef:
    """Where a cluster's credentials live: a kubeconfig path and context, or (None) the in-cluster account."""

    name: str
    kubeconfig: str | None
    context: str | None = None
    # Whether its client may reach the server unverified; refused unless the registration said so.
    allow_unverified_tls: bool = False
    # The cluster it was registered for (``Cluster.identity``); "" where none was recorded.
    identity: str = ""

    def fingerprint(self) -> tuple[object, ...]:
        """What the client depends on: the reference, and the size and change time of the kubeconfig
        file and of the files it names (a ``tokenFile``, certificates, keys), which the client reads once:
        a token rotated in its file, the kubeconfig untouched, builds the client again."""
        # The allowance too: a cluster removed and added again without it, between two refreshes of a
        # process, would otherwise keep the client built when it was allowed.
        kept = (self.kubeconfig, self.context, self.allow_unverified_tls, self.identity)
        if not self.kubeconfig:
            return kept
        try:
            stat = os.stat(self.kubeconfig)
        except OSError:
            return (*kept, None)
        named = _named_files(self.kubeconfig, stat.st_mtime_ns, stat.st_size)
        return (*kept, *_stat_state(stat), *map(_file_state, named))

    def unverified_refusal(self, client: Cluster) -> str | None:
        """Why ``client``, just built, may not be used: it reaches its server without checking its
        certificate and the registration did not allow that; None when it may. Names the cluster and
        where its credentials live, never the server (its URL may carry credentials) or the file's
        content."""
        if not client.unverified or self.allow_unverified_tls:
            return None
        how = "without checking its certificate (insecure-skip-tls-verify)"
        if not str(client.server).startswith("https://"):
            how = "over plain http"
        return (
            f"cluster {self.name}: its {self.where()} now reaches the server {how}, which its registration "
            "does not allow: nothing is sent there. Give the kubeconfig the cluster's CA (https), or allow "
            f"it: gitops update-cluster {self.name} --allow-unverified-tls"
        )

    def where(self) -> str:
        """Where its credentials live, as errors name them: never the server or the file's content."""
        if not self.kubeconfig:
            return "in-cluster account"
        return f"kubeconfig {self.kubeconfig} (context {self.context or 'current'})"

    def connect(self, *, pool_size: int = DEFAULT_POOL_SIZE) -> Cluster:
        return Cluster(self.kubeconfig, context=self.context, name=self.name, pool_size=pool_size)


# The fields of a kubeconfig's users and clusters that name a file the client reads.
_FILE_FIELDS = ("tokenFile", "client-certificate", "client-key", "certificate-authority")


@functools.lru_cache(maxsize=256)
def _named_files(kubeconfig: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The files ``kubeconfig`` names, as of that version of it (relative ones from its directory);
    () when it cannot be read, which connecting reports."""
    del mtime_ns, size  # the cache's key: a rewritten kubeconfig is read again
    try:
        with open(kubeconfig, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ()
    if not isinstance(config, dict):
        return ()
    here = os.path.dirname(os.path.abspath(kubeconfig))
    found: set[str] = set()
    for section, entry in (("users", "user"), ("clusters", "cluster")):
        items = config.get(section)
        for item in items if isinstance(items, list) else ():
            fields = item.get(entry) if isinstance(item, dict) else None
            if not isinstance(fields, dict):
                continue
            found.update(
                os.path.join(here, value)
                for value in (fields.get(name) for name in _FILE_FIELDS)
                if isinstance(value, str) and value
            )
    return tuple(sorted(found))


def _another_cluster(ref: ClusterRef, connected: Cluster) -> str | None:
    """Why ``connected``, just built, may not be used: it reaches another cluster than the one ``ref`` was
    registered for (``Cluster.identity``); None when it reaches that one, or none was recorded. A
    kubeconfig rewritten in place (another server, another context) would otherwise have Sluice prune,
    apply and roll back there what its inventory, pending changes and owed rollbacks say of this one.
    One that does not answer is not kept (TemporaryError, remembered as unreachable for a few seconds,
    then built again). One whose identity it may not read is refused too: the identity was read through
    the same registration's credentials when it was recorded, so credentials that may not read it now
    reach, most likely, another cluster, where they hold another role (before 2026-12-07 it was used,
    unverified; a rewrite to such credentials passed the check)."""
    if not ref.identity:
        return None
    try:
        seen = connected.identity(timeout=IDENTITY_SECONDS)
    except (ReadForbidden, NotFoundError) as exc:
        return _identity_unreadable(ref, exc)
    except GitopsError:
        # Not answering, or refusing the credentials (401): they send nothing anyway, and say so.
        connected.close()
        raise
    if seen == ref.identity:
        return None
    if ref.name == default_cluster_name():
        return (
            f"cluster {ref.name}: its {ref.where()} now reaches another cluster (kube-system namespace uid "
            f"{seen}; SLUICE_CLUSTER_IDENTITY says {ref.identity}): nothing is sent there. Point it back at "
            f"{ref.name}'s server; {ref.name} rebuilt: set SLUICE_CLUSTER_IDENTITY={seen}"
        )
    return (
        f"cluster {ref.name}: its {ref.where()} now reaches another cluster (kube-system namespace uid "
        f"{seen}; it was registered for {ref.identity}): nothing is sent there. Point it back at "
        f"{ref.name}'s server, or register that cluster under a name of its own; {ref.name} rebuilt under "
        f"the same name: gitops update-cluster {ref.name} --record-identity --rebuilt"
    )


def _identity_unreadable(ref: ClusterRef, error: GitopsError) -> str:
    """Why a client whose credentials may not read the cluster's identity is refused."""
    if ref.name == default_cluster_name():  # stated by the deployment, read with its own tools
        return (
            f"cluster {ref.name}: SLUICE_CLUSTER_IDENTITY is set, and its kube-system namespace cannot be "
            f"read through its {ref.where()} ({error}): which cluster it reaches cannot be told, and nothing "
            "is sent there. Grant its credentials Sluice's namespace reader role, or unset "
            "SLUICE_CLUSTER_IDENTITY"
        )
    return (
        f"cluster {ref.name}: which cluster its {ref.where()} reaches cannot be told: its kube-system "
        f"namespace cannot be read ({error}), which it could when its identity was recorded "
        f"({ref.identity}): nothing is sent there. Point it back at {ref.name}'s server, or give its "
        f"credentials Sluice's namespace reader role again; narrowed on purpose: gitops update-cluster "
        f"{ref.name} --clear-identity"
    )


def _credentials_expected(ref: ClusterRef) -> bool:
    """Whether ``ref``'s client must have credentials: a registered cluster (``add-cluster`` refuses one
    without), or a kubeconfig whose users run an exec plugin."""
    if ref.name != default_cluster_name():
        return True
    if not ref.kubeconfig:
        return False
    try:
        stat = os.stat(ref.kubeconfig)
    except OSError:
        return False
    return _runs_exec(ref.kubeconfig, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _runs_exec(kubeconfig: str, mtime_ns: int, size: int) -> bool:
    del mtime_ns, size  # the cache's key: a rewritten kubeconfig is read again
    try:
        with open(kubeconfig, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    users = config.get("users") if isinstance(config, dict) else None
    return any(
        isinstance(item, dict) and isinstance(item.get("user"), dict) and "exec" in item["user"]
        for item in (users if isinstance(users, list) else ())
    )


def credential_files() -> frozenset[str]:
    """Every file a cluster's credentials come from: the default and registered clusters' kubeconfigs and
    the files they name (a ``tokenFile``, a client key), as absolute paths. A source's Git credentials
    may not be one of them: its URL's host, whoever that is, would receive a cluster's token."""
    found: set[str] = set()
    for ref in (default_ref(), *registered_refs().values()):
        if not ref.kubeconfig:
            continue
        found.add(os.path.abspath(ref.kubeconfig))
        try:
            stat = os.stat(ref.kubeconfig)
        except OSError:
            continue
        found.update(_named_files(ref.kubeconfig, stat.st_mtime_ns, stat.st_size))
    return frozenset(found)


def _file_state(path: str) -> tuple[int, ...] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _stat_state(stat)


def _stat_state(stat: os.stat_result) -> tuple[int, ...]:
    """What tells one version of a file from another: its change time and inode too, since a token of the
    same length copied with its modification time kept (``rsync -a``, ``cp -p``) changes neither of the
    other two, and the process kept the old token until it restarted."""
    return (stat.st_mtime_ns, stat.st_size, stat.st_ctime_ns, stat.st_ino)


def default_cluster_name() -> str:
    return str(settings.SLUICE_CLUSTER_NAME)


def default_ref() -> ClusterRef:
    # Allowed: the default cluster is the deployment's own KUBECONFIG, never registered through
    # add-cluster, and nothing ever refused it for an unverified server. Its identity is the deployment's
    # to state (SLUICE_CLUSTER_IDENTITY): nothing records one for it.
    return ClusterRef(
        default_cluster_name(),
        settings.KUBECONFIG or None,
        allow_unverified_tls=True,
        identity=settings.SLUICE_CLUSTER_IDENTITY,
    )


def registered_refs() -> dict[str, ClusterRef]:
    """The registered clusters, read in one query."""
    rows = ClusterRecord.objects.values_list(
        "name", "kubeconfig", "context", "in_cluster", "allow_unverified_tls", "identity"
    )
    return {
        name: ClusterRef(name, None if in_cluster else kubeconfig, context or None, allowed, identity)
        for name, kubeconfig, context, in_cluster, allowed, identity in rows
    }


class ClusterClients:
    """One client per cluster for this process, rebuilt when its reference or kubeconfig changes."""

    def __init__(self) -> None:
        # Connections each client keeps; a process set before its first client (``gitops live-cache``).
        self.pool_size = DEFAULT_POOL_SIZE
        self._lock = threading.Lock()
        self._refs: dict[str, ClusterRef] | None = None
        self._clients: dict[str, tuple[tuple[object, ...], Cluster]] = {}
        self._pinned: dict[str, Cluster] = {}
        self._down: dict[str, tuple[float, GitopsError]] = {}
        self._building: dict[str, threading.Lock] = {}  # one client built per cluster at a time
        # Clusters whose client was refused as unverified, by the fingerprint it was built from: asked
        # again, the refusal is repeated without building (loading a kubeconfig may run an exec plugin)
        # until the kubeconfig, the files it names or the registration change.
        self._refused: dict[str, tuple[tuple[object, ...], str, type[PermanentError], float]] = {}
        # Clusters whose identity read did not answer, by the fingerprint built from (``get``).
        self._unanswered: dict[str, tuple[object, ...]] = {}

    def mark_unreachable(self, name: str, error: GitopsError) -> None:
        """Remembers for a few seconds that ``name`` did not answer (or refused), and counts it. The error
        remembered, raised again by ``get`` and reported back here, does not make the memory last longer:
        the cluster would never be asked again."""
        with self._lock:
            entry = self._down.get(name)
            if entry is not None and entry[1] is error:
                return
            self._down[name] = (time.monotonic() + UNREACHABLE_MEMORY_SECONDS, error)
        metrics.CLUSTER_UNREACHABLE.labels(name).inc()

    def forget_unreachable(self) -> None:
        """Tests: forgets every cluster that failed a moment ago: one test's refusals are not the next's."""
        with self._lock:
            self._down.clear()

    def recently_unreachable(self, name: str) -> GitopsError | None:
        """Why ``name`` failed a moment ago, or None: then it is worth asking again."""
        with self._lock:
            entry = self._down.get(name)
            if entry is None or entry[0] < time.monotonic():
                self._down.pop(name, None)
                return None
            return entry[1]

    def refresh(self) -> dict[str, ClusterRef]:
        """Reads the registry again (one query): clusters registered, removed or re-pointed since. The
        clients of clusters removed since go, with their connections and threads."""
        refs = registered_refs()
        with self._lock:
            self._refs = refs
            gone = [name for name in self._clients if name not in refs and name != default_cluster_name()]
        if gone:
            self.forget(gone)
        return refs

    def ref(self, name: str | None = None) -> ClusterRef:
        if name is None or name == default_cluster_name():
            return default_ref()
        refs = self._refs
        if refs is None or name not in refs:
            refs = self.refresh()  # registered since this process last looked
        found = refs.get(name)
        if found is None:
            raise UnknownClusterError(f"cluster {name!r} is not registered (gitops add-cluster)")
        return found

    def get(self, name: str | None = None) -> Cluster:
        ref = self.ref(name)
        fingerprint = ref.fingerprint()
        with self._lock:
            if (pinned := self._pinned.get(ref.name)) is not None:
                return pinned
            if (known := self._current(ref.name, fingerprint)) is not None:
                return known
            self._raise_refused(ref.name, fingerprint)
            building = self._building.setdefault(ref.name, threading.Lock())
        # Built outside the process-wide lock: a kubeconfig's exec plugin (a cloud CLI that fetches a
        # token) may take seconds, and every other cluster's clients, informers and passes go on.
        with building:
            fingerprint = ref.fingerprint()  # as it is now: a file may have changed while this waited
            with self._lock:
                if (known := self._current(ref.name, fingerprint)) is not None:
                    return known  # another thread built it meanwhile
                self._raise_refused(ref.name, fingerprint)
            if self._unanswered.get(ref.name) == fingerprint and (
                down := self.recently_unreachable(ref.name)
            ):
                # Its build asks the cluster which it is: one that did not answer a moment ago, from these
                # very files, costs one timeout per process every few seconds, as its requests do, not one
                # per request. New files (credentials, a server) are asked at once.
                raise down
            connected = ref.connect(pool_size=self.pool_size)
            # Checked at each build, so also when a kubeconfig is rewritten in place: add-cluster's check
            # alone let a file that later skipped the certificate check send the cluster's credentials to
            # whoever answers at its server's address.
            if (refusal := ref.unverified_refusal(connected)) is not None:
                self._refuse(ref.name, fingerprint, connected, refusal)
            if not connected.has_credentials and _credentials_expected(ref):
                connected.close()
                # An exec plugin that failed once (a cloud CLI's throttled call) left the client without
                # credentials, and kept, it sent every request of this process anonymously until the
                # kubeconfig changed. Not kept: the next request builds it again.
                raise TemporaryError(
                    f"cluster {ref.name}: its kubeconfig's credentials could not be loaded (an exec plugin "
                    "failed?); asked again at the next request"
                )
            try:
                refusal = _another_cluster(ref, connected)
            except GitopsError as exc:  # not answering, or its credentials refused (401): for a few seconds
                with self._lock:
                    self._unanswered[ref.name] = fingerprint
                self.mark_unreachable(ref.name, exc)
                raise
            if refusal is not None:
                self._refuse(ref.name, fingerprint, connected, refusal, ClusterIdentityError)
            with self._lock:
                replaced = self._clients.get(ref.name)
                self._clients[ref.name] = (fingerprint, connected)
                self._down.pop(ref.name, None)  # new credentials or a new server: ask it afresh
                self._unanswered.pop(ref.name, None)
                self._refused.pop(ref.name, None)
        if replaced is not None:
            replaced[1].close()
        return connected

    def _refuse(
        self,
        name: str,
        fingerprint: tuple[object, ...],
        connected: Cluster,
        refusal: str,
        kind: type[PermanentError] = UnverifiedClusterError,
    ) -> NoReturn:
        """Drops a client refused (unverified, or another cluster), and the one built before from other
        files: neither is served, and the refusal is remembered for these files."""
        connected.close()
        # An identity seen once (a misrouted address) is asked again after a while; files do not change.
        until = time.monotonic() + IDENTITY_REFUSAL_SECONDS if kind is ClusterIdentityError else math.inf
        with self._lock:
            self._refused[name] = (fingerprint, refusal, kind, until)
            stale = self._clients.pop(name, None)
        if stale is not None:
            stale[1].close()
        raise kind(refusal)

    def _raise_refused(self, name: str, fingerprint: tuple[object, ...]) -> None:
        """Refuses again a client refused from these very files (the lock is held)."""
        refused = self._refused.get(name)
        if refused is not None and refused[0] == fingerprint and time.monotonic() < refused[3]:
            raise refused[2](refused[1])

    def _current(self, name: str, fingerprint: tuple[object, ...]) -> Cluster | None:
        """The client built for ``name`` from these credentials, if there is one (the lock is held)."""
        known = self._clients.get(name)
        return known[1] if known is not None and known[0] == fingerprint else None

    def names(self) -> list[str]:
        """The default cluster, then every registered one by name."""
        refs = self._refs if self._refs is not None else self.refresh()
        return [default_cluster_name(), *sorted(set(refs) - {default_cluster_name()})]

    def pin(self, name: str, cluster: Cluster | None) -> Cluster | None:
        """Tests: serve ``cluster`` for ``name`` whatever the registry says (None unpins).

        Returns the pin it replaced."""
        with self._lock:
            previous = self._pinned.pop(name, None)
            if cluster is not None:
                self._pinned[name] = cluster
        return previous

    def forget(self, names: Iterable[str] | None = None) -> None:
        """Drops clients (all, or the named ones); the next use connects again."""
        with self._lock:
            wanted = list(names or self._clients)
            dropped = [self._clients.pop(name) for name in wanted if name in self._clients]
            if names is None:
                self._refused.clear()
            for name in wanted:
                self._refused.pop(name, None)
                self._unanswered.pop(name, None)
            if names is None:
                self._refs = None
        for _, cluster in dropped:
            cluster.close()
        for name in wanted:
            pools.forget(name)  # a removed cluster's threads go too


clients = ClusterClients()


def get_cluster(name: str | None = None) -> Cluster:
    """The client of cluster ``name`` (None: the default cluster)."""
    return clients.get(name)
