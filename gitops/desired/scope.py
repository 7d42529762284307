"""What an administrator allowed a source. Pure: no Django.

A repository is written by whoever can push to it, so its own policy can only
narrow what an administrator allowed, never widen it: the clusters and
namespaces it may write and the URLs its analysis steps may call.

Namespace globs take the form ``CLUSTER/NAMESPACE`` (``prod-*/team-*``); a glob
without a slash means the default cluster, so single-cluster scopes read as before.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import SplitResult, unquote, urlsplit

from gitops.desired.policy import DEFAULT_CLUSTER, namespace_glob_problem, shown_globs
from gitops.redaction import redact, url_without_query

HTTP_SCHEMES = ("http", "https")
_UNSAFE_CHARACTERS = re.compile(r"[\s\x00-\x1f\x7f]")
DEFAULT_PORTS = {"http": 80, "https": 443}
CLUSTER_SEPARATOR = "/"


def scope_glob_problem(pattern: str) -> str | None:
    """Why an administrator's ``CLUSTER/NAMESPACE`` (or ``NAMESPACE``) glob is unusable, or None."""
    cluster, separator, namespace = pattern.rpartition(CLUSTER_SEPARATOR)
    if separator and (not cluster or CLUSTER_SEPARATOR in cluster):
        return f"{pattern!r} is not a glob like NAMESPACE or CLUSTER/NAMESPACE (one '/' at most)"
    if separator and (problem := namespace_glob_problem(cluster)):
        return problem.replace("namespace name or glob", "cluster name or glob")
    return namespace_glob_problem(namespace)


@dataclass(frozen=True)
class AdminScope:
    """``None`` means "not checked here" (offline validation has no administrator); empty allows nothing.

    ``known_clusters`` are the clusters that exist (the default one and the registered
    ones); None when validation cannot know them (offline).
    """

    namespaces: tuple[str, ...] | None = None
    analysis_url_prefixes: tuple[str, ...] | None = None
    default_cluster: str = DEFAULT_CLUSTER
    known_clusters: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        namespaces: Iterable[str],
        analysis_url_prefixes: Iterable[str],
        *,
        default_cluster: str = DEFAULT_CLUSTER,
        known_clusters: Iterable[str] | None = None,
    ) -> AdminScope:
        return cls(
            tuple(namespaces),
            tuple(analysis_url_prefixes),
            default_cluster,
            frozenset(known_clusters) if known_clusters is not None else None,
        )

    @cached_property
    def _pairs(self) -> tuple[tuple[str, str], ...]:
        """Each glob as (cluster glob, namespace glob); a glob without a slash is the default cluster's."""
        pairs = []
        for pattern in self.namespaces or ():
            cluster, separator, namespace = pattern.rpartition(CLUSTER_SEPARATOR)
            pairs.append((cluster if separator else self.default_cluster, namespace))
        return tuple(pairs)

    def _shown(self) -> str:
        return shown_globs(self.namespaces or ())

    def cluster_problem(self, cluster: str) -> str | None:
        """Why a policy may not name ``cluster``: it does not exist, or no glob of the scope reaches it."""
        if self.known_clusters is not None and cluster not in self.known_clusters:
            known = ", ".join(sorted(self.known_clusters))
            return (
                f"cluster {cluster!r} is not registered (known clusters: {known}); an administrator "
                "registers one with gitops add-cluster"
            )
        if not self.namespaces:  # None: not checked; empty: each object says it may go nowhere yet
            return None
        if any(fnmatch.fnmatchcase(cluster, pattern) for pattern, _ in self._pairs):
            return None
        return f"cluster {cluster!r} is outside the clusters this source may manage ({self._shown()})"

    def namespace_problem(self, namespace: str, cluster: str | None = None) -> str | None:
        if self.reaches(namespace, cluster):
            return None
        return self.namespace_refusal(namespace, cluster)

    def reaches(self, namespace: str, cluster: str | None = None) -> bool:
        """Whether the source may write to ``namespace`` of ``cluster`` (None: the default cluster)."""
        if self.namespaces is None:
            return True
        cluster = cluster or self.default_cluster
        return any(
            fnmatch.fnmatchcase(cluster, cluster_glob) and fnmatch.fnmatchcase(namespace, namespace_glob)
            for cluster_glob, namespace_glob in self._pairs
        )

    def namespace_refusal(self, namespace: str, cluster: str | None = None) -> str:
        """Why the source may not write to ``namespace`` of ``cluster``, which it does not ``reach``."""
        cluster = cluster or self.default_cluster
        where = "" if cluster == self.default_cluster else f" in cluster {cluster!r}"
        if not self.namespaces:
            return (
                f"namespace {namespace!r}{where}: this source may not write to any namespace yet; an "
                "administrator must allow some (gitops update-source NAME --allow-namespace GLOB)"
            )
        allowed = self._shown()
        return f"namespace {namespace!r}{where} is outside the namespaces this source may manage ({allowed})"

    def analysis_url_problem(self, url: str) -> str | None:
        if self.analysis_url_prefixes is None:
            return None
        if url_allowed(url, self.analysis_url_prefixes):
            return None
        if not self.analysis_url_prefixes:
            return (
                "this source may not call any analysis URL; an administrator must allow a prefix "
                "(gitops update-source NAME --allow-analysis-url PREFIX)"
            )
        allowed = ", ".join(self.analysis_url_prefixes)
        # The URL is the repository's: whatever credentials it carries must not reach pages and logs.
        return (
            f"{url_without_query(url)!r} is not under an analysis URL prefix this source may call ({allowed})"
        )


def url_prefix_problem(prefix: str) -> str | None:
    """Why an administrator's URL prefix is unusable, or None."""
    parts = _split(prefix)
    if parts is None or parts.scheme not in HTTP_SCHEMES or not parts.hostname:
        return f"{redact(prefix)!r} is not an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return f"{redact(prefix)!r} must not carry credentials"
    if parts.query or parts.fragment:
        return f"{redact(prefix)!r} must not have a query or a fragment"
    if _unsafe_path(parts.path):
        return f"{redact(prefix)!r} has a path with '.', '..' or escaped separators"
    return None


def url_allowed(url: str, prefixes: Iterable[str]) -> bool:
    """Whether ``url`` lies under one of ``prefixes``: same scheme, host and port, and a path below.

    Compared parsed, not as text, so "https://checks.example.com.evil.test/" is not
    under "https://checks.example.com", nor "/checks-admin" under "/checks".
    """
    # What is checked is what ``outbound.post`` sends: up to the first "#" (urllib cut at the last one,
    # so "/checks/#/../admin#" was checked as "/checks/" and sent as "/checks/#/../admin").
    target = _split(url.partition("#")[0])
    if (
        target is None
        or target.scheme not in HTTP_SCHEMES
        or not target.hostname
        or target.username is not None
        or target.password is not None
        or _unsafe_path(target.path)
    ):
        return False
    return any(_under(target, prefix) for prefix in prefixes)


def _under(target: SplitResult, prefix: str) -> bool:
    allowed = _split(prefix)
    if allowed is None or url_prefix_problem(prefix) is not None:
        return False
    if (target.scheme, target.hostname) != (allowed.scheme, allowed.hostname):
        return False
    if _port(target) != _port(allowed):
        return False
    base = allowed.path or "/"
    path = target.path or "/"
    if base.endswith("/"):
        return path.startswith(base)
    return path == base or path.startswith(base + "/")


def _split(url: str) -> SplitResult | None:
    if _UNSAFE_CHARACTERS.search(url):  # a space or a control character breaks the request line
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return None
    return None if port == 0 else parts


def _port(parts: SplitResult) -> int | None:
    return parts.port or DEFAULT_PORTS.get(parts.scheme)


def _unsafe_path(path: str) -> bool:
    """Dot segments and escaped separators would let a URL leave the prefix once the server resolves it.

    Also refused: a double escape (``%25``, which some servers decode twice) and
    ``..;`` segments (which some servlet containers read as ``..``).
    """
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%25" in lowered or "\\" in path:
        return True
    return any(segment.split(";")[0] in (".", "..") for segment in unquote(path).split("/"))
