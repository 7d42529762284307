"""The only module that talks to the ``kubernetes`` package.

It lists, applies and deletes ConfigMaps and reads the server's version and
health. Objects go in and out as plain dicts, and every API failure leaves this
module as a ``TemporaryError`` or a ``PermanentError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import urllib3
from django.conf import settings
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from gitops.errors import PermanentError, TemporaryError

APPLY_PATCH = "application/apply-patch+yaml"
# Workload kinds and the suffix of their calls in the generated AppsV1Api.
WORKLOAD_KINDS = {"Deployment": "deployment", "StatefulSet": "stateful_set", "DaemonSet": "daemon_set"}
REQUEST_TIMEOUT = (5, 60)  # connect, read (seconds)


class FieldConflictError(PermanentError):
    """Server-side apply refused because another field manager owns a field."""


class NotFoundError(PermanentError):
    pass


@dataclass(frozen=True)
class ServerVersion:
    git_version: str
    major: str
    minor: str


def _translate(exc: ApiException, *, applying: bool = False) -> Exception:
    status = exc.status or 0
    reason = _reason(exc)
    if status in (429, 500, 502, 503, 504) or status == 0:
        retry_after = None
        if exc.headers and exc.headers.get("Retry-After", "").isdigit():
            retry_after = float(exc.headers["Retry-After"])
        return TemporaryError(f"kube-apiserver answered {status}: {reason}", delay=retry_after)
    if status == 404:
        return NotFoundError(reason)
    if status == 409:
        # With server-side apply a 409 is a field conflict with another manager;
        # anywhere else it is a create or update race that a retry resolves.
        if applying:
            return FieldConflictError(reason)
        return TemporaryError(f"conflict: {reason}")
    return PermanentError(f"kube-apiserver answered {status}: {reason}")


def _reason(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


@contextmanager
def _api_errors(*, applying: bool = False) -> Iterator[None]:
    try:
        yield
    except ApiException as exc:
        raise _translate(exc, applying=applying) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TemporaryError(f"kube-apiserver unreachable: {exc}") from exc


class Cluster:
    """A connection to one cluster, from a kubeconfig file or the in-cluster service account."""

    def __init__(
        self, kubeconfig: str | None = None, *, context: str | None = None, pool_size: int = 32
    ) -> None:
        configuration = client.Configuration()
        if kubeconfig:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
        # Applies run in parallel threads; each needs its own pooled connection.
        configuration.connection_pool_maxsize = pool_size
        self._api_client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api_client)
        self._apps = client.AppsV1Api(self._api_client)
        self._version = client.VersionApi(self._api_client)
        self.server = configuration.host

    @classmethod
    def from_settings(cls) -> Cluster:
        return cls(settings.KUBECONFIG)

    def close(self) -> None:
        self._api_client.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def server_version(self) -> ServerVersion:
        with _api_errors():
            info = self._version.get_code(_request_timeout=REQUEST_TIMEOUT)
        return ServerVersion(git_version=info.git_version, major=info.major, minor=info.minor)

    def list_configmaps(self, namespace: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        """All ConfigMaps of a namespace in one LIST, as the apiserver's JSON."""
        with _api_errors():
            response = self._core.list_namespaced_config_map(
                namespace,
                label_selector=label_selector or None,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        # Skipping the generated models keeps a 10,000-object LIST cheap.
        items: list[dict[str, Any]] = json.loads(response.data)["items"]
        return items

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            with _api_errors():
                response = self._core.read_namespaced_config_map(
                    name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
        except NotFoundError:
            return None
        result: dict[str, Any] = json.loads(response.data)
        return result

    def apply_configmap(
        self, manifest: Mapping[str, Any], *, field_manager: str, force: bool = False, dry_run: bool = False
    ) -> dict[str, Any]:
        """Server-side apply; returns the object as the apiserver stored it."""
        metadata = manifest["metadata"]
        with _api_errors(applying=True):
            response = self._core.patch_namespaced_config_map(
                metadata["name"],
                metadata["namespace"],
                dict(manifest),
                field_manager=field_manager,
                force=force,
                dry_run="All" if dry_run else None,
                _content_type=APPLY_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        result: dict[str, Any] = json.loads(response.data)
        return result

    def delete_configmap(self, namespace: str, name: str, *, resource_version: str | None = None) -> bool:
        """Deletes the object; False when it was already gone."""
        preconditions = (
            client.V1Preconditions(resource_version=resource_version) if resource_version else None
        )
        try:
            with _api_errors():
                self._core.delete_namespaced_config_map(
                    name,
                    namespace,
                    body=client.V1DeleteOptions(preconditions=preconditions),
                    _request_timeout=REQUEST_TIMEOUT,
                )
        except NotFoundError:
            return False
        return True

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
        patch: dict[str, Any] = {}
        if data:
            patch["data"] = dict.fromkeys(data)
        if binary_data:
            patch["binaryData"] = dict.fromkeys(binary_data)
        with _api_errors():
            self._core.patch_namespaced_config_map(
                name,
                namespace,
                patch,
                field_manager=field_manager,
                _content_type="application/merge-patch+json",
                _request_timeout=REQUEST_TIMEOUT,
            )

    # -- workloads: Deployments, StatefulSets and DaemonSets -------------------------------

    def _workload_calls(self, kind: str) -> tuple[Any, Any, Any]:
        """The list, read and patch calls of a workload kind."""
        suffix = WORKLOAD_KINDS.get(kind)
        if suffix is None:
            raise PermanentError(f"{kind!r} is not a workload kind Sluice restarts")
        return (
            getattr(self._apps, f"list_namespaced_{suffix}"),
            getattr(self._apps, f"read_namespaced_{suffix}"),
            getattr(self._apps, f"patch_namespaced_{suffix}"),
        )

    def list_workloads(self, kind: str, namespace: str) -> tuple[list[dict[str, Any]], str]:
        """Every workload of a kind in a namespace (each with its kind), and the list's resourceVersion."""
        list_call, _, _ = self._workload_calls(kind)
        with _api_errors():
            response = list_call(namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        body = json.loads(response.data)
        items: list[dict[str, Any]] = body["items"]
        for item in items:
            item.setdefault("kind", kind)
        return items, str(body.get("metadata", {}).get("resourceVersion", ""))

    def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        _, read_call, _ = self._workload_calls(kind)
        try:
            with _api_errors():
                response = read_call(
                    name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
        except NotFoundError:
            return None
        result: dict[str, Any] = json.loads(response.data)
        result.setdefault("kind", kind)
        return result

    def apply_workload(
        self, body: Mapping[str, Any], *, field_manager: str, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply of a partial workload (a restart stamp); returns the object as stored."""
        _, _, patch_call = self._workload_calls(str(body["kind"]))
        metadata = body["metadata"]
        with _api_errors(applying=True):
            response = patch_call(
                metadata["name"],
                metadata["namespace"],
                dict(body),
                field_manager=field_manager,
                force=force,
                _content_type=APPLY_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        result: dict[str, Any] = json.loads(response.data)
        return result

    def watch_workloads(
        self, kind: str, namespace: str, *, resource_version: str, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for each change of a kind in a namespace after ``resource_version``.

        Ends after ``timeout_seconds`` (the server closes the watch). A ``410 Gone``
        (the version is too old) leaves as a TemporaryError: list again.
        """
        list_call, _, _ = self._workload_calls(kind)
        stream = watch.Watch().stream(
            list_call,
            namespace,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            _request_timeout=(REQUEST_TIMEOUT[0], timeout_seconds + 5),
        )
        with _api_errors():
            for event in stream:
                raw = event.get("raw_object") or {}
                if event.get("type") == "ERROR":
                    raise TemporaryError(
                        f"the watch of {kind}s in {namespace} ended: {raw.get('message', '')}"
                    )
                raw.setdefault("kind", kind)
                yield str(event.get("type")), raw

    def namespace_exists(self, namespace: str) -> bool:
        try:
            with _api_errors():
                self._core.read_namespace(namespace, _request_timeout=REQUEST_TIMEOUT)
        except NotFoundError:
            return False
        return True

    def create_namespace(self, namespace: str) -> None:
        try:
            with _api_errors():
                self._core.create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)),
                    _request_timeout=REQUEST_TIMEOUT,
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
