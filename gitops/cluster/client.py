"""The only module that talks to the ``kubernetes`` package.

It lists, applies and deletes ConfigMaps and reads the server's version and
health. Objects go in and out as plain dicts, and every API failure leaves this
module as a ``TemporaryError`` or a ``PermanentError``. Every call's time is
bounded: a connect timeout and a read timeout (``SLUICE_CLUSTER_CONNECT_TIMEOUT``,
``SLUICE_CLUSTER_READ_TIMEOUT``), and one retry of a dropped connection at most.
A cluster that does not answer, or refuses Sluice's credentials
(``ClusterRefused``), fails only what is asked of that cluster.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any, NamedTuple, cast
from urllib.parse import quote, urlencode

import urllib3
import yaml
from django.conf import settings
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse
from kubernetes.config import exec_provider

from gitops.cluster import curl
from gitops.desired.content import is_reserved
from gitops.errors import PermanentError, TemporaryError
from gitops.numerals import whole_number
from gitops.plan.provenance import live_provenance
from gitops.storable import compact_json, json_value, storable_text

APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
RELEASE_ATTEMPTS = 3
# Workload kinds Sluice restarts and gates: (group, version, resource) of each.
WORKLOAD_KINDS = {
    "Deployment": ("apps", "v1", "deployments"),
    "StatefulSet": ("apps", "v1", "statefulsets"),
    "DaemonSet": ("apps", "v1", "daemonsets"),
    "Rollout": ("argoproj.io", "v1alpha1", "rollouts"),
}
# Kinds a cluster serves only where their CRD is installed (Argo Rollouts): where it is not, a cluster
# has none of them, and RBAC that grants nothing on them refuses nothing Sluice needs.
OPTIONAL_WORKLOAD_KINDS = frozenset({"Rollout"})
# How long a cluster's answer to "do you serve this kind?" is kept (``_serves``).
DISCOVERY_SECONDS = 60.0
# An apiserver (or a proxy before it) that asks for more is waited for this long, then asked again:
# a Retry-After of a year must not park a source's sync for a year.
MAX_RETRY_AFTER = 300
REQUEST_TIMEOUT = (3.0, 30.0)  # connect, read (seconds), unless settings say otherwise
# The client's own requests (reads, deletions, the patches of a release; applies too when they do not go
# through libcurl) try a failed connection once more, never more: a silent cluster costs two connect
# timeouts. Only reads are sent again after the request may have reached the server (a read timeout, a
# connection dropped before the answer): a write sent again could land a read timeout later still, after
# the reconcile lock's fence let the next pass write (``SLUICE_PASS_TAKEOVER_SECONDS``). PATCH and POST
# were never sent again; DELETE and PUT were.
ONE_RETRY_OF_A_READ = urllib3.Retry(total=1, allowed_methods=frozenset({"GET", "HEAD", "OPTIONS"}))


class FieldConflictError(PermanentError):
    """Server-side apply refused because another field manager owns a field."""


class ClusterRefused(PermanentError):
    """401, or 403 on a read: the cluster does not accept Sluice's credentials (or not for this)."""


class ReadForbidden(ClusterRefused):
    """403 on a read: the credentials are good, but RBAC does not grant this read."""


# What makes a cluster unavailable for a pass: it does not answer in time, answers 5xx/429, or refuses.
UNAVAILABLE = (TemporaryError, ClusterRefused)


class NotFoundError(PermanentError):
    pass


class NotHeldError(PermanentError):
    """A delete or a release refused by Sluice itself: the object is no longer the source's that asked
    for it."""


class _ChangedMeanwhile(Exception):
    """A delete's precondition failed: the object changed (or was replaced) after it was read."""


class WriteOutcome(StrEnum):
    """How one conditional write of a batch went (``Cluster.delete_configmaps``, ``release_configmaps``)."""

    DONE = "done"
    GONE = "gone"  # the object is gone (deleted, by this batch or before)
    # The object is no longer the one read (its uid or resourceVersion): nothing written; read it and
    # check its labels before writing (``Cluster.delete_configmap``, ``release_configmap``).
    CHANGED = "changed"


class ResourceGone(TemporaryError):
    """410 Gone: the resourceVersion asked for is older than the apiserver keeps; list again."""


@dataclass(frozen=True)
class ServerVersion:
    git_version: str
    major: str
    minor: str


def _translate(exc: ApiException, *, applying: bool = False, reading: bool = False) -> Exception:
    status = exc.status or 0
    reason = _reason(exc)
    if status == 403 and reading:
        return ReadForbidden(f"kube-apiserver answered {status}: {reason}")
    if status == 401:
        return ClusterRefused(f"kube-apiserver answered {status}: {reason}")
    if status in (429, 500, 502, 503, 504) or status == 0:
        seconds = whole_number((exc.headers or {}).get("Retry-After", ""))
        retry_after = None if seconds is None else float(min(seconds, MAX_RETRY_AFTER))
        return TemporaryError(f"kube-apiserver answered {status}: {reason}", delay=retry_after)
    if status == 404:
        return NotFoundError(reason)
    if status == 410:
        return ResourceGone(f"kube-apiserver answered 410: {reason}")
    if status == 409:
        # With server-side apply a 409 is a field conflict with another manager;
        # anywhere else it is a create or update race that a retry resolves.
        if applying:
            return FieldConflictError(reason)
        return TemporaryError(f"conflict: {reason}")
    return PermanentError(f"kube-apiserver answered {status}: {reason}")


def _pointer(key: str) -> str:
    """A key as a JSON-pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _release_patch(live: Mapping[str, Any], field_manager: str) -> list[dict[str, Any]]:
    metadata = live.get("metadata", {})
    operations: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": metadata.get("resourceVersion", "")}
    ]
    for section in ("labels", "annotations"):
        for key in sorted(metadata.get(section) or {}):
            if is_reserved(key):
                operations.append({"op": "remove", "path": f"/metadata/{section}/{_pointer(key)}"})
    others = [entry for entry in metadata.get("managedFields") or () if entry.get("manager") != field_manager]
    # An empty list would keep managedFields as they are; a single empty entry clears them.
    operations.append({"op": "replace", "path": "/metadata/managedFields", "value": others or [{}]})
    return operations


def _reason(exc: ApiException) -> str:
    try:
        return cluster_text(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return cluster_text(exc.reason)


# How much of a message from a cluster is kept.
CLUSTER_TEXT_LENGTH = 2000


def cluster_text(value: object) -> str:
    """A message from a cluster, as records keep it: an admission webhook's denial, or a policy's
    message that quotes the object, can be any length and hold U+0000, which PostgreSQL refuses."""
    text = storable_text(str(value))
    return text if len(text) <= CLUSTER_TEXT_LENGTH else text[:CLUSTER_TEXT_LENGTH] + "…"


@contextmanager
def _api_errors(*, applying: bool = False, reading: bool = False) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise _translate(exc, applying=applying, reading=reading) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TemporaryError(f"kube-apiserver unreachable: {_network_reason(exc)}") from exc


def _answer_error(answer: curl.Answer) -> ApiException:
    """A non-2xx answer as the client reports one, so ``_translate`` reads it the same."""
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:
        phrase = ""
    error = ApiException(status=answer.status, reason=phrase)
    error.body = answer.body
    error.headers = answer.headers
    return error


@functools.lru_cache(maxsize=1024)
def _configmaps_path(server: str, namespace: str) -> str:
    """A namespace's ConfigMaps URL: the same for every object of a batch, quoted once."""
    return f"{server}/api/v1/namespaces/{quote(namespace, safe='')}/configmaps/"


# A surrogate pair escape (a character beyond U+FFFF, such as an emoji) in JSON text, after an even
# run of backslashes: after an odd one, "\\ud83d" is an escaped backslash followed by text.
_SURROGATE_PAIR_ESCAPE = re.compile(
    r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE
)


def _yaml_readable(body: str) -> str:
    """``body`` (JSON) with each surrogate pair escape written as YAML's ``\\UXXXXXXXX``.

    The apiserver parses an apply body as YAML (JSON being YAML), and its YAML parser refuses a
    ``\\ud83d\\ude00`` pair, Python's JSON for "😀", as an invalid escape: such a value was refused
    with a 400. Everything else is left as it is; a body without such an escape is returned as it is.
    The body must stay ASCII (``ensure_ascii``): that parser refuses a raw BOM, DEL or C1 control.
    """
    if "\\ud" not in body and "\\uD" not in body:
        return body
    return _SURROGATE_PAIR_ESCAPE.sub(_astral_escape, body)


def _astral_escape(match: re.Match[str]) -> str:
    backslashes, high, low = match.groups()
    code_point = 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
    return f"{backslashes}\\U{code_point:08x}"


@functools.lru_cache(maxsize=64)
def _apply_query(field_manager: str, force: bool, dry_run: bool) -> str:
    # fieldValidation=Ignore: without it the apiserver takes "Warn", and after each apply decodes the
    # whole body a second time, strictly, into a map: only to warn of duplicate keys. A body here is
    # JSON of a dict (no duplicate can occur) and Sluice reads no warnings. An unknown field is refused
    # whatever the directive, by server-side apply's check against the type's schema. The apiserver's
    # CPU per created object fell by 8 to 12% in alternating runs (bench/HISTORY.md, 2026-12-04).
    query = [
        ("fieldManager", field_manager),
        ("fieldValidation", "Ignore"),
        *([("force", "true")] if force else []),
    ]
    if dry_run:
        query.append(("dryRun", "All"))
    return urlencode(query)


class Applied(NamedTuple):
    """A server-side apply the cluster took, and the resourceVersion it stored ("": its answer gave none)."""

    resource_version: str


_METADATA_FIELD = b'"metadata":{'
_RESOURCE_VERSION_FIELD = b'"resourceVersion":"'


# The head of an apply's answer kept while its batch runs: its resourceVersion comes before the object's
# labels, annotations, managed fields and data, after a name (253 characters at most), a namespace (63)
# and a uid; what is cut off gives "" (``resource_version_in``), which costs reads, never a wrong plan.
APPLIED_ANSWER_KEPT = 2048


def resource_version_in(answer: bytes) -> str:
    """The resourceVersion of the object in an apply's JSON answer, found without parsing it. The
    apiserver encodes ``kind``, ``apiVersion``, then ``metadata``, whose ``resourceVersion`` comes after
    the name, namespace and uid (none of which can hold a quote or a brace) and before any label,
    annotation or managed field. So it is taken only there: from ``metadata``'s opening with no object
    or list opened before it, in the answer or in ``metadata``. Anything else (keys sorted by a proxy,
    spaces, a value that is not a number) gives "": no floor is set then (see livestore's "Floors"),
    which costs reads, never a wrong plan."""
    opening = answer.find(_METADATA_FIELD)
    if opening < 0 or answer.find(b"{", 1, opening) >= 0 or answer.find(b"[", 0, opening) >= 0:
        return ""
    inside = opening + len(_METADATA_FIELD)
    start = answer.find(_RESOURCE_VERSION_FIELD, inside)
    if start < 0 or answer.find(b"{", inside, start) >= 0 or answer.find(b"[", inside, start) >= 0:
        return ""
    start += len(_RESOURCE_VERSION_FIELD)
    end = answer.find(b'"', start, start + 32)
    version = answer[start:end] if end > start else b""
    return version.decode("ascii") if version.isdigit() else ""


def _refusal(result: curl.Answer | curl.CurlError) -> Exception | None:
    """What an apply's answer means: None once applied, else what ``_api_errors(applying=True)``
    would raise for it."""
    if isinstance(result, curl.CurlError):
        return TemporaryError(f"kube-apiserver unreachable: {result.reason}")
    if 200 <= result.status <= 299:
        return None
    return _translate(_answer_error(result), applying=True)


# The answers that mean a conditional write's condition failed: a delete's precondition gives a 409; a
# JSON patch's failed test a 422 (k8s.io/apiserver's patch handler; so does a patch the cluster finds
# invalid, which the read that follows tells apart: ``release_configmap`` refuses it once the object
# still holds the version tested), or a 409 when the stored object moved meanwhile.
_CONDITION_FAILED = {
    "DELETE": frozenset({HTTPStatus.CONFLICT}),
    "PATCH": frozenset({HTTPStatus.CONFLICT, HTTPStatus.UNPROCESSABLE_ENTITY}),
}


def _conditional_outcome(result: curl.Answer | curl.CurlError, method: str) -> WriteOutcome | Exception:
    """What a conditional write's answer means."""
    if isinstance(result, curl.CurlError):
        return TemporaryError(f"kube-apiserver unreachable: {result.reason}")
    if 200 <= result.status <= 299:
        return WriteOutcome.DONE
    if result.status == HTTPStatus.NOT_FOUND:
        return WriteOutcome.GONE
    if result.status in _CONDITION_FAILED[method]:
        return WriteOutcome.CHANGED
    return _translate(_answer_error(result))


def _network_reason(exc: BaseException) -> str:
    """A short, stable reason (the same failure reads the same every time): "connection refused",
    "read timed out"; never the request's URL."""
    reason = getattr(exc, "reason", None)
    cause: BaseException = reason if isinstance(reason, BaseException) else exc
    if isinstance(cause, curl.CurlError):
        return cause.reason
    if isinstance(cause, urllib3.exceptions.NewConnectionError):  # a subclass of ConnectTimeoutError
        return str(cause).rpartition("Failed to establish a new connection: ")[2].split("] ")[-1].lower()
    if isinstance(cause, urllib3.exceptions.ConnectTimeoutError):
        return "connect timed out"
    if isinstance(cause, urllib3.exceptions.ReadTimeoutError):
        return "read timed out"
    if isinstance(cause, urllib3.exceptions.SSLError):
        return "TLS handshake failed"
    first_line = (str(cause).splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first_line[:200]}"


# A watch's events come one by one as the apiserver commits them: during a bulk apply, a thousand a
# second, each its own chunk. Read as they come, each cost the live cache a wakeup and a read of its
# own, with cold caches: four times its CPU per event of the same events read together. Once a watch
# has told everything that has arrived, it waits this long before reading on, so what came meanwhile
# is read and told together. A change arriving after a quiet spell is read at once; one arriving in
# this window is told at most this much later.
WATCH_GATHER_SECONDS = 0.025
# A read that took longer than this waited for the network: what it brought is the first of new news.
_WAITED_SECONDS = 0.001


def _lines(response: Any, *, gather_seconds: float = 0.0) -> Iterator[bytes]:
    """The lines of a streamed response (one watch event each), as they arrive; with
    ``gather_seconds``, each time all that has arrived is told, waits that long before reading on.

    Once per spell: what urllib3 read ahead (up to 8 KiB, which the socket no longer shows) is told
    after one wait without another, and the next wait comes only once news is seen arriving (data
    waiting in the socket, or a read that had to wait for it)."""
    pending = b""
    chunks = response.stream(amt=None, decode_content=False)
    may_wait = True
    while True:
        asked = time.monotonic()
        chunk = next(chunks, None)
        if chunk is None:
            return
        may_wait = may_wait or time.monotonic() - asked > _WAITED_SECONDS
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield from (line for line in lines if line.strip())
        if not gather_seconds:
            continue
        if not _nothing_arrived(response):
            may_wait = True
        elif may_wait:
            time.sleep(gather_seconds)
            may_wait = False


def _nothing_arrived(response: Any) -> bool:
    """Whether the response's connection has nothing left to read: no data in the socket nor
    decrypted in its TLS layer. False whenever that cannot be told, so a stream is never held up
    with data waiting (what urllib3 has read ahead, at most 8 KiB, does wait, one gathering at most):
    a connection through an HTTPS proxy is TLS inside TLS (urllib3's ``SSLTransport``), whose
    decrypted bytes no socket can tell of, and is never waited on."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if not isinstance(sock, socket.socket):
        return False
    try:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return False
        readable = select.poll()
        readable.register(sock, select.POLLIN)
        return not readable.poll(0)
    except (OSError, ValueError):  # closed meanwhile: the next read tells
        return False


def _watch_error(namespace: str, status: Mapping[str, Any]) -> Exception:
    """An ERROR event's Status as the error it stands for: 410 lists again, anything else retries."""
    code, why = status.get("code"), cluster_text(status.get("message", ""))
    message = f"the watch of ConfigMaps in {namespace} ended ({code}): {why}"
    if code == 410:
        return ResourceGone(message)
    return TemporaryError(message)


# How long a kubeconfig's exec plugin (aws eks get-token, kubelogin, gke-gcloud-auth-plugin) may take to
# answer. The client waits on it without a bound: a plugin that hung (a metadata endpoint black-holed, a
# device-code login waiting for someone) held every pass of the cluster's sources, and their locks, for
# good, and the clusters page's threads with them.
EXEC_PLUGIN_SECONDS = 30.0


# What a worker's environment holds of its own that a credential plugin never needs: the database, the
# broker, Django's signing keys, Sluice's settings (a metrics token among them), and the Git credentials
# sources name (``SLUICE_CREDENTIALS_ENV_PREFIX``). A plugin is a program of the kubeconfig's choosing: it
# got the whole environment, DATABASE_URL and SECRET_KEY with it.
_WORKER_SECRETS = frozenset(
    {
        "DATABASE_URL",
        "SECRET_KEY",
        "SECRET_KEY_FALLBACKS",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "PGPASSWORD",
    }
)
_WORKER_PREFIXES = ("SLUICE_", "DJANGO_")


def plugin_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` (the client's: the worker's environment and the kubeconfig's ``env`` entries over it)
    without what the worker holds of its own. An entry the kubeconfig sets to a value of its own is
    kept, whatever its name: only what was inherited goes."""
    prefix = str(getattr(settings, "SLUICE_CREDENTIALS_ENV_PREFIX", "") or "")

    def inherited_secret(name: str, value: str) -> bool:
        own = (
            name in _WORKER_SECRETS
            or name.startswith(_WORKER_PREFIXES)
            or bool(prefix and name.startswith(prefix))
        )
        return own and os.environ.get(name) == value

    return {name: value for name, value in env.items() if not inherited_secret(name, value)}


class _BoundedPlugin(subprocess.Popen[str]):
    """The exec plugin's process, without the worker's own secrets (``plugin_environment``), answered
    within EXEC_PLUGIN_SECONDS or killed with every process it started (a wrapper script's child holding
    its output would keep the wait going). A plugin run at a
    terminal (the library passes it the terminal: ``gitops add-cluster`` by hand, a device-code login)
    has a person to answer it, and is not bounded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._bounded = kwargs.get("stdin") is None
        kwargs["env"] = plugin_environment(kwargs.get("env") or os.environ)
        super().__init__(*args, **kwargs, start_new_session=self._bounded)

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:
        if not self._bounded:
            return super().communicate(input, timeout=timeout)
        try:
            return super().communicate(input, timeout=timeout or EXEC_PLUGIN_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                super().communicate(timeout=2)
            raise config.ConfigException(
                f"exec: the credential plugin did not answer within {EXEC_PLUGIN_SECONDS:g} s"
            ) from None


class _PluginProcesses:
    """What the client's exec provider reads of ``subprocess``, with its process bounded in time."""

    Popen = _BoundedPlugin
    PIPE = subprocess.PIPE


exec_provider.subprocess = _PluginProcesses


class Cluster:
    """A connection to one cluster, from a kubeconfig file or the in-cluster service account."""

    def __init__(
        self,
        kubeconfig: str | None = None,
        *,
        context: str | None = None,
        pool_size: int = 32,
        name: str = "",
    ) -> None:
        configuration = client.Configuration()
        try:
            if kubeconfig:
                # Never written back: a refreshed token rewrote the file in place (workers and the web at
                # once, each reading the other's torn write), and a read-only Secret mount refused it.
                config.load_kube_config(
                    config_file=kubeconfig,
                    context=context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            else:
                config.load_incluster_config(client_configuration=configuration)
        except (config.ConfigException, OSError, ValueError, TypeError, yaml.YAMLError) as exc:
            # Names the reference, never the file's content: a kubeconfig holds credentials. A file that
            # is not YAML at all raised a traceback (before 2026-12-07).
            where = (
                f"{kubeconfig} (context {context or 'current'})" if kubeconfig else "the in-cluster account"
            )
            raise ClusterRefused(f"cannot load the credentials of {where}: {type(exc).__name__}") from exc
        # Applies run in parallel threads; each needs its own pooled connection.
        configuration.connection_pool_maxsize = pool_size
        configuration.retries = ONE_RETRY_OF_A_READ
        self.timeout = (
            float(getattr(settings, "SLUICE_CLUSTER_CONNECT_TIMEOUT", REQUEST_TIMEOUT[0])),
            float(getattr(settings, "SLUICE_CLUSTER_READ_TIMEOUT", REQUEST_TIMEOUT[1])),
        )
        self.name = name
        self._api_client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api_client)
        self._custom = client.CustomObjectsApi(self._api_client)
        self._served: dict[tuple[str, str, str], tuple[float, bool]] = {}
        self._version = client.VersionApi(self._api_client)
        self.server = configuration.host
        # What add-cluster refuses unless told: the server's certificate unchecked, or no TLS at all (a
        # token sent in the clear).
        self.unverified = not configuration.verify_ssl or not str(configuration.host).startswith("https://")
        # An exec plugin that fails (not installed in the image, say) is only logged by the client,
        # which then loads with no credentials at all: add-cluster refuses that.
        self.has_credentials = bool(
            configuration.api_key or configuration.cert_file or configuration.username
        )
        # Applies go through libcurl unless the administrator chose urllib3 or the configuration
        # needs what only the client's own pool carries (gitops/cluster/curl.py).
        use_curl = getattr(settings, "SLUICE_APPLY_TRANSPORT", "curl") == "curl"
        self._curl = (
            curl.Transport(configuration, self.timeout)
            if use_curl and curl.Transport.supports(configuration)
            else None
        )

    @classmethod
    def from_settings(cls) -> Cluster:
        return cls(settings.KUBECONFIG)

    def close(self) -> None:
        self._api_client.close()
        if self._curl is not None:
            self._curl.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def server_version(self, *, timeout: float | None = None) -> ServerVersion:
        bounded = (timeout, timeout) if timeout else self.timeout
        with _api_errors(reading=True):
            info = self._version.get_code(_request_timeout=bounded)
        return ServerVersion(git_version=info.git_version, major=info.major, minor=info.minor)

    def identity(self, *, timeout: float | None = None) -> str:
        """The cluster's identity: the uid of its ``kube-system`` namespace, made once when the cluster was
        made and the same through every address and credential that reaches it (the namespace reader Sluice
        is granted reads it). Another cluster, even one restored from the same manifests, has another."""
        bounded = (timeout, timeout) if timeout else self.timeout
        with _api_errors(reading=True):
            namespace = self._core.read_namespace("kube-system", _request_timeout=bounded)
        return str(namespace.metadata.uid)

    def list_configmaps(self, namespace: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        """All ConfigMaps of a namespace in one LIST, as the apiserver's JSON."""
        with _api_errors(reading=True):
            response = self._core.list_namespaced_config_map(
                namespace,
                label_selector=label_selector or None,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        # Skipping the generated models keeps a 10,000-object LIST cheap.
        items: list[dict[str, Any]] = json_value(response.data)["items"]
        return items

    def list_configmap_page(
        self, namespace: str, *, label_selector: str, limit: int, continue_token: str = ""
    ) -> tuple[list[dict[str, Any]], str, str]:
        """One page of a LIST: (objects, the list's resourceVersion, the token of the next page or "").

        ``namespace`` "" lists every namespace's (which RBAC must grant cluster-wide)."""
        with _api_errors(reading=True):
            response = self._configmap_lister(namespace)(
                label_selector=label_selector or None,
                limit=limit,
                _continue=continue_token or None,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        body = json_value(response.data)
        metadata = body.get("metadata") or {}
        return body["items"], str(metadata.get("resourceVersion", "")), str(metadata.get("continue") or "")

    def watch_configmaps(
        self, namespace: str, *, resource_version: str, label_selector: str, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for each change after ``resource_version``, BOOKMARKs included.

        The server ends the watch after ``timeout_seconds``; a connection silent
        for 5 s longer fails as a TemporaryError. ``ResourceGone`` (410) means
        the version is too old: list again. ``namespace`` "" watches every namespace.
        """
        with _api_errors(reading=True):
            response = self._configmap_lister(namespace)(
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                label_selector=label_selector or None,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=(self.timeout[0], timeout_seconds + 5),
            )
            try:
                for line in _lines(response, gather_seconds=WATCH_GATHER_SECONDS):
                    event = json_value(line)
                    kind, obj = str(event.get("type", "")), event.get("object") or {}
                    if kind == "ERROR":
                        raise _watch_error(namespace or "every namespace", obj)
                    yield kind, obj
            finally:
                response.release_conn()

    def _configmap_lister(self, namespace: str) -> Callable[..., Any]:
        """The LIST (and WATCH) call of one namespace's ConfigMaps, or with "" of every namespace's."""
        if not namespace:
            return cast(Callable[..., Any], self._core.list_config_map_for_all_namespaces)
        return functools.partial(self._core.list_namespaced_config_map, namespace)

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with _api_errors(reading=True):
                response = self._core.read_namespaced_config_map(
                    name, namespace, _preload_content=False, _request_timeout=self.timeout
                )
        except NotFoundError:
            return None
        result: dict[str, Any] = json.loads(response.data)
        return result

    def apply_configmap(
        self, manifest: Mapping[str, Any], *, field_manager: str, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply; returns the object as the apiserver stored it."""
        url, encoded = self._apply_request(manifest, field_manager, force, dry_run=dry_run)
        with _api_errors(applying=True):
            data = self._apply_patch(url, encoded)
        result: dict[str, Any] = json.loads(data)
        return result

    @property
    def applies_in_batches(self) -> bool:
        """Whether ``apply_configmaps`` may be used: applies go through libcurl (``curl.Transport``)."""
        return self._curl is not None

    def apply_configmaps(
        self,
        manifests: Sequence[tuple[Mapping[str, Any], bool]],
        *,
        field_manager: str,
        width: int,
        bodies: Sequence[str | None] | None = None,
        before_each: Callable[[], None] | None = None,
    ) -> list[Applied | PermanentError]:
        """Server-side applies of (manifest, force) pairs, ``width`` at a time on the calling thread:
        for each, ``Applied`` with the resourceVersion stored, or why the cluster refused it for good.
        The answers are not parsed: their resourceVersion is found in the text. ``bodies`` may give, in
        the same order, a manifest already encoded as JSON (its very content), sent as it is; None
        encodes it here.
        ``before_each`` is called before each apply goes out; what it raises ends the batch (the applies
        under way are abandoned) and comes out of this call.

        A temporary failure (the apiserver unreachable, throttling, a 5xx) or refused credentials
        raise, and no further apply is sent: a silent cluster costs the applies already under way
        one timeout together, not one each. Only with ``applies_in_batches``.
        """
        if self._curl is None:
            raise RuntimeError("batched applies need the libcurl transport")
        with _api_errors(applying=True):  # a handle libcurl could not set up raises here
            encoded = bodies if bodies is not None else [None] * len(manifests)
            results = self._curl.patch_all(
                (
                    self._apply_request(manifest, field_manager, force, body=body)
                    for (manifest, force), body in zip(manifests, encoded, strict=True)
                    if before_each is None or before_each() is None
                ),
                self._apply_headers(),
                width=width,
                gives_up=lambda result: isinstance(_refusal(result), UNAVAILABLE),
                success_kept=APPLIED_ANSWER_KEPT,
            )
        # An apply with no answer was never known to be stored: it stays pending (it was called applied,
        # as the conditional batch's were until be77778, though no batch ends so today).
        refusals = [
            _refusal(result) if result is not None else TemporaryError("the batch ended before it")
            for result in results
        ]
        if len(refusals) < len(manifests):
            refusals.append(TemporaryError(f"the batch ended after {len(refusals)} of {len(manifests)}"))
        first_unavailable = next((r for r in refusals if isinstance(r, UNAVAILABLE)), None)
        if first_unavailable is not None:
            raise first_unavailable
        return [
            cast(PermanentError, refusal)
            if refusal is not None
            else Applied(resource_version_in(result.body) if isinstance(result, curl.Answer) else "")
            for result, refusal in zip(results, refusals, strict=True)
        ]

    def delete_configmaps(
        self,
        objects: Sequence[tuple[str, str, tuple[str, str]]],
        *,
        width: int,
        before_each: Callable[[], None] | None = None,
    ) -> list[WriteOutcome | PermanentError]:
        """Deletes of (namespace, name, (uid, resourceVersion)) objects the caller read as its source's,
        each on the condition that it is still that object at that version, ``width`` at a time on the
        calling thread: for each, how it went (``CHANGED``: not deleted, read it and check it) or why the
        cluster refused it for good. The answers are not parsed. ``before_each`` as for
        ``apply_configmaps``; a temporary failure or refused credentials raise, and no further delete is
        sent. Only with ``applies_in_batches``: a prune of 5,000 objects through the generated client,
        each on a thread of its own, cost the worker three times the CPU of as many creates.
        """
        requests = (self._delete_request(namespace, name, seen) for namespace, name, seen in objects)
        return self._conditional_batch(
            "DELETE", requests, len(objects), "application/json", width=width, before_each=before_each
        )

    def release_configmaps(
        self,
        listed: Sequence[Mapping[str, Any]],
        *,
        field_manager: str,
        width: int,
        before_each: Callable[[], None] | None = None,
    ) -> list[WriteOutcome | PermanentError]:
        """``release_configmap`` of objects the caller listed as its source's, without a read each: one
        JSON patch per object, made from the object listed and tested against its resourceVersion, sent
        ``width`` at a time on the calling thread. ``CHANGED``: not released (the test failed, or the
        cluster found the patch invalid), read it and check it; otherwise as ``delete_configmaps``."""
        query = urlencode({"fieldManager": f"{field_manager}-release"})
        requests = (
            (
                f"{_configmaps_path(self.server, live['metadata']['namespace'])}"
                f"{quote(live['metadata']['name'], safe='')}?{query}",
                compact_json(_release_patch(live, field_manager)).encode(),
            )
            for live in listed
        )
        return self._conditional_batch(
            "PATCH", requests, len(listed), JSON_PATCH, width=width, before_each=before_each
        )

    def _conditional_batch(
        self,
        method: str,
        requests: Iterator[tuple[str, bytes]],
        count: int,
        content_type: str,
        *,
        width: int,
        before_each: Callable[[], None] | None,
    ) -> list[WriteOutcome | PermanentError]:
        """Writes, each on a condition the apiserver checks, as one batch through libcurl: each one's
        outcome in order. What makes a cluster unavailable raises, and no further write is sent."""
        if self._curl is None:
            raise RuntimeError("batched writes need the libcurl transport")
        with _api_errors():
            results = self._curl.send_all(
                method,
                (request for request in requests if before_each is None or before_each() is None),
                self._request_headers(content_type),
                width=width,
                gives_up=lambda result: isinstance(_conditional_outcome(result, method), UNAVAILABLE),
                success_kept=0,  # only a refusal's text is read
            )
        outcomes = [
            _conditional_outcome(result, method)
            if result is not None
            else TemporaryError("the batch ended before it")
            for result in results
        ]
        if len(outcomes) < count:  # never: a batch stops early only after an answer raised below
            outcomes.append(TemporaryError(f"the batch ended after {len(outcomes)} of {count} writes"))
        first_unavailable = next((o for o in outcomes if isinstance(o, UNAVAILABLE)), None)
        if first_unavailable is not None:
            raise first_unavailable
        return cast(list[WriteOutcome | PermanentError], outcomes)

    def _delete_request(self, namespace: str, name: str, seen: tuple[str, str]) -> tuple[str, bytes]:
        uid, version = seen
        options = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid, "resourceVersion": version},
        }
        url = f"{_configmaps_path(self.server, namespace)}{quote(name, safe='')}"
        return url, compact_json(options).encode()

    def _apply_request(
        self,
        manifest: Mapping[str, Any],
        field_manager: str,
        force: bool,
        *,
        dry_run: bool = False,
        body: str | None = None,
    ) -> tuple[str, bytes]:
        """The URL and the body (encoded once: ``body`` when the caller has it) of one server-side apply."""
        metadata = manifest["metadata"]
        url = (
            f"{_configmaps_path(self.server, metadata['namespace'])}{quote(metadata['name'], safe='')}"
            f"?{_apply_query(field_manager, force, dry_run)}"
        )
        encoded = body if body is not None else compact_json(dict(manifest))
        return url, _yaml_readable(encoded).encode()

    def _apply_headers(self) -> dict[str, str]:
        return self._request_headers(APPLY_PATCH)

    def _request_headers(self, content_type: str) -> dict[str, str]:
        """Asked for each request or batch: an exec plugin's token refreshes as the client's own calls do."""
        headers = {**self._api_client.default_headers, "Accept": "application/json"}
        headers["Content-Type"] = content_type
        self._api_client.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    def _apply_patch(self, url: str, encoded: bytes) -> bytes:
        """One server-side apply through libcurl (``curl.Transport``) or, for what that does not carry
        over, straight through the client's urllib3 pool.

        The generated API walks the body to sanitize it, encodes it and builds each call from
        generic parameter lists: per object, that cost Sluice as much CPU as the request itself.
        Authentication (tokens a kubeconfig refreshes included) is the client's own; TLS and timeouts
        follow its configuration; anything but 2xx is an ``ApiException`` either way.
        """
        headers = self._apply_headers()
        if self._curl is not None:
            answer = self._curl.patch(url, encoded, headers)
            if not 200 <= answer.status <= 299:
                raise _answer_error(answer)
            return answer.body
        try:
            response = self._api_client.rest_client.pool_manager.request(
                "PATCH",
                url,
                body=encoded,
                headers=headers,
                timeout=urllib3.Timeout(connect=self.timeout[0], read=self.timeout[1]),
            )
        except urllib3.exceptions.SSLError as exc:  # as the client's own requests report it
            raise ApiException(status=0, reason=f"{type(exc).__name__}\n{exc}") from exc
        if not 200 <= response.status <= 299:
            raise ApiException(http_resp=RESTResponse(response))
        data: bytes = response.data
        return data

    def delete_configmap(
        self,
        namespace: str,
        name: str,
        *,
        held_by: str | None = None,
        seen: tuple[str, str] = ("", ""),
        fence: Callable[[], None] = lambda: None,
    ) -> bool:
        """Deletes the object; False when it was already gone.

        With ``held_by`` (a source's name) only while the object is still that source's: it is read, its
        labels checked, and the delete sent on the condition that the object is still the one read (its
        uid and resourceVersion). Another source or a person that took it over since the plan (or a
        removal's listing) keeps it: ``NotHeldError``. A change between the read and the delete is read
        again; ``fence`` is asked before each delete.

        ``seen``: the uid and resourceVersion of the object the caller read as ``held_by``'s (a plan, a
        removal's listing, a rollback's LIST). The delete is sent first on the condition that it is still
        that object at that version, and no read is needed: a prune of 10,000 objects made 10,000 reads
        more. Any write since, a takeover included, gives the object a new version, fails the condition,
        and is read as above."""
        if held_by is None:
            return self._delete_configmap(namespace, name, None)
        if all(seen):
            fence()
            try:
                return self._delete_configmap(
                    namespace, name, client.V1Preconditions(uid=seen[0], resource_version=seen[1])
                )
            except _ChangedMeanwhile:
                pass  # changed since it was read: read it and check its labels
        for _attempt in range(RELEASE_ATTEMPTS):
            live = self.get_configmap(namespace, name)
            if live is None:
                return False
            owner = live_provenance(live)[0]
            if owner != held_by:
                holder = f"source {owner}'s" if owner else "no source's (its labels were taken off)"
                raise NotHeldError(f"{namespace}/{name} was not deleted: it is now {holder}")
            metadata = live.get("metadata") or {}
            fence()
            try:
                return self._delete_configmap(
                    namespace,
                    name,
                    client.V1Preconditions(
                        uid=metadata.get("uid"), resource_version=metadata.get("resourceVersion")
                    ),
                )
            except _ChangedMeanwhile:
                continue
        raise TemporaryError(f"{namespace}/{name} changed at each of {RELEASE_ATTEMPTS} tries to delete it")

    def _delete_configmap(
        self, namespace: str, name: str, preconditions: client.V1Preconditions | None
    ) -> bool:
        try:
            with _api_errors():
                try:
                    self._core.delete_namespaced_config_map(
                        name,
                        namespace,
                        body=client.V1DeleteOptions(preconditions=preconditions),
                        _request_timeout=self.timeout,
                    )
                except ApiException as exc:
                    if preconditions is not None and exc.status == HTTPStatus.CONFLICT:
                        raise _ChangedMeanwhile() from exc  # a precondition failed: the object changed
                    raise
        except NotFoundError:
            return False
        return True

    def release_configmap(
        self,
        namespace: str,
        name: str,
        *,
        field_manager: str,
        fence: Callable[[], None] = lambda: None,
        held_by: str | None = None,
    ) -> bool:
        """Lets go of an object and leaves its content: Sluice's labels and annotations go, and so does
        ``field_manager``'s entry in managedFields, so no later apply of it can take the fields back.

        One JSON patch that first tests the resourceVersion, so a concurrent writer's managedFields are
        never overwritten; tried again on a race. False when the object is gone. ``fence`` is asked
        before each patch: a pass that lost its lock while it read again must not release the object
        the next pass has just applied (its patch would pass the test against the fresh read).

        A patch refused with the object still at the version it tested (a 403, an admission policy's
        422) is refused for good: only a moved version means the test failed. An object whose labels a
        person took off (no source's) is released all the same: what is left of Sluice's on it goes.
        """
        refused: PermanentError | None = None
        tested = ""
        for _attempt in range(RELEASE_ATTEMPTS):
            live = self.get_configmap(namespace, name)
            if live is None:
                return False
            if refused is not None and str((live.get("metadata") or {}).get("resourceVersion")) == tested:
                raise refused  # it failed no test: it was refused as it is (up to 3 tries each before)
            tested = str((live.get("metadata") or {}).get("resourceVersion"))
            owner = live_provenance(live)[0]
            if held_by is not None and owner not in (None, held_by):
                # Taken over by another source since the listing: its labels and Sluice's entry in
                # managedFields (one field manager for every source) are that source's now.
                raise NotHeldError(f"{namespace}/{name} was not released: it is now source {owner}'s")
            fence()
            try:
                with _api_errors():
                    self._core.patch_namespaced_config_map(
                        name,
                        namespace,
                        _release_patch(live, field_manager),
                        field_manager=f"{field_manager}-release",
                        _content_type=JSON_PATCH,
                        _request_timeout=self.timeout,
                    )
            except PermanentError as exc:  # a failed resourceVersion test is a 422 too: read it again
                refused = exc
                continue
            return True
        raise refused or PermanentError(f"{namespace}/{name} could not be released")

    def remove_configmap_keys(
        self,
        namespace: str,
        name: str,
        *,
        data: list[str],
        binary_data: list[str],
        field_manager: str = "sluice",
    ) -> None:
        """Removes keys whatever manager owns them (a JSON merge patch sets them to null)."""
        self.merge_configmap_keys(
            namespace,
            name,
            data=dict.fromkeys(data),
            binary_data=dict.fromkeys(binary_data),
            field_manager=field_manager,
        )

    def merge_configmap_keys(
        self,
        namespace: str,
        name: str,
        *,
        data: Mapping[str, str | None],
        binary_data: Mapping[str, str | None],
        field_manager: str = "sluice",
    ) -> None:
        """Sets keys of data and binaryData in one JSON merge patch, whatever manager owns them; None
        removes a key. One request moves a key between the two sections without a moment it is absent."""
        patch: dict[str, Any] = {}
        if data:
            patch["data"] = dict(data)
        if binary_data:
            patch["binaryData"] = dict(binary_data)
        if not patch:
            return
        with _api_errors():
            self._core.patch_namespaced_config_map(
                name,
                namespace,
                patch,
                field_manager=field_manager,
                _content_type="application/merge-patch+json",
                _request_timeout=self.timeout,
            )

    # -- workloads: Deployments, StatefulSets, DaemonSets and Argo Rollouts -------------

    @staticmethod
    def _workload_resource(kind: str) -> tuple[str, str, str]:
        resource = WORKLOAD_KINDS.get(kind)
        if resource is None:
            raise PermanentError(f"{kind!r} is not a workload kind Sluice restarts")
        return resource

    def list_workloads(self, kind: str, namespace: str) -> tuple[list[dict[str, Any]], str]:
        """Every workload of a kind in a namespace (each with its kind), and the list's resourceVersion:
        none, and no version, where the cluster does not serve an optional kind (Argo Rollouts not
        installed)."""
        group, version, plural = self._workload_resource(kind)
        try:
            with _api_errors(reading=True):
                response = self._custom.list_namespaced_custom_object(
                    group, version, namespace, plural, _preload_content=False, _request_timeout=self.timeout
                )
        except NotFoundError:
            if kind in OPTIONAL_WORKLOAD_KINDS:
                return [], ""
            raise
        except ReadForbidden:
            # RBAC is asked before the resource is looked for: a grant that never named Rollouts refuses
            # them where Argo Rollouts is not even installed. Only where it is does the refusal matter.
            if kind in OPTIONAL_WORKLOAD_KINDS and not self._serves(group, version, plural):
                return [], ""
            raise
        body = json.loads(response.data)
        items: list[dict[str, Any]] = body["items"]
        for item in items:
            item.setdefault("kind", kind)
        return items, str(body.get("metadata", {}).get("resourceVersion", ""))

    def _serves(self, group: str, version: str, plural: str) -> bool:
        """Whether the cluster serves a resource, from its discovery (which every user may read), kept
        for ``DISCOVERY_SECONDS``: a CRD installed later is seen within a minute."""
        key = (group, version, plural)
        now = time.monotonic()
        kept = self._served.get(key)
        if kept is not None and now - kept[0] < DISCOVERY_SECONDS:
            return kept[1]
        try:
            with _api_errors(reading=True):
                response = self._api_client.call_api(
                    f"/apis/{group}/{version}",
                    "GET",
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
            data = (response[0] if isinstance(response, tuple) else response).data
            served = any(item.get("name") == plural for item in json.loads(data).get("resources") or ())
        except NotFoundError:
            served = False
        self._served[key] = (now, served)
        return served

    def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        group, version, plural = self._workload_resource(kind)
        try:
            with _api_errors(reading=True):
                response = self._custom.get_namespaced_custom_object(
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    _preload_content=False,
                    _request_timeout=self.timeout,
                )
        except NotFoundError:
            return None
        result: dict[str, Any] = json.loads(response.data)
        result.setdefault("kind", kind)
        return result

    def apply_workload(
        self, body: Mapping[str, Any], *, field_manager: str, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply of a partial workload (a restart stamp); returns the object as stored.

        Sent as a ConfigMap's apply is (``_apply_patch``), its body readable by the apiserver's YAML
        parser: a rollback restores the commit annotation the workload held before, whoever wrote it.
        """
        group, version, plural = self._workload_resource(str(body["kind"]))
        metadata = body["metadata"]
        url = (
            f"{self.server}/apis/{group}/{version}/namespaces/{quote(metadata['namespace'], safe='')}"
            f"/{plural}/{quote(metadata['name'], safe='')}"
            f"?{_apply_query(field_manager, force, False)}"
        )
        encoded = _yaml_readable(json.dumps(dict(body), separators=(",", ":"))).encode()
        with _api_errors(applying=True):
            data = self._apply_patch(url, encoded)
        result: dict[str, Any] = json.loads(data)
        return result

    def watch_workloads(
        self, kind: str, namespace: str, *, resource_version: str, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for each change of a kind in a namespace after ``resource_version``.

        Ends after ``timeout_seconds`` (the server closes the watch). A ``410 Gone``
        (the version is too old) leaves as a TemporaryError: list again.
        """
        group, version, plural = self._workload_resource(kind)
        stream = watch.Watch().stream(
            self._custom.list_namespaced_custom_object,
            group,
            version,
            namespace,
            plural,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            _request_timeout=(self.timeout[0], timeout_seconds + 5),
        )
        with _api_errors(reading=True):
            for event in stream:
                raw = event.get("raw_object") or {}
                if event.get("type") == "ERROR":
                    raise TemporaryError(
                        f"the watch of {kind}s in {namespace} ended: {cluster_text(raw.get('message', ''))}"
                    )
                raw.setdefault("kind", kind)
                yield str(event.get("type")), raw

    def namespace_exists(self, namespace: str) -> bool:
        try:
            with _api_errors():
                self._core.read_namespace(namespace, _request_timeout=self.timeout)
        except NotFoundError:
            return False
        return True

    def create_namespace(self, namespace: str) -> None:
        try:
            with _api_errors():
                self._core.create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)),
                    _request_timeout=self.timeout,
                )
        except TemporaryError:
            # A 409 here means it already exists, which is what we wanted.
            if not self.namespace_exists(namespace):
                raise

    def healthy(self, timeout: float = 3) -> bool:
        try:
            with _api_errors():
                body = self._api_client.call_api(
                    "/readyz",
                    "GET",
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=(timeout, timeout),
                )
        except (TemporaryError, PermanentError):
            return False
        response = body[0] if isinstance(body, tuple) else body
        return bool(getattr(response, "status", 0) == 200)
