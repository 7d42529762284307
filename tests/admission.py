"""A real kube-apiserver that answers reads and refuses writes: a validating admission webhook whose
endpoint does not answer, with ``failurePolicy: Fail``. Every ConfigMap write in the namespaces it
covers then gets ``500 Internal error occurred: failed calling webhook``, which Sluice takes as a
temporary failure (its writes stay pending), as it would take a crashed admission controller."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.workers import poll

# Nothing listens on port 1: the apiserver's call fails at once, with "connection refused".
NOBODY = "https://127.0.0.1:1/admit"


@contextmanager
def writes_refused(api_client: Any, namespaces: list[str]) -> Iterator[None]:
    """ConfigMap writes in ``namespaces`` are refused (500) while inside; taken again after."""
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    name = f"sluice-test-refuse-{uuid.uuid4().hex[:8]}"
    rule = {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE", "DELETE"],
        "resources": ["configmaps"],
    }
    selector = {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]
    }
    admission.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "refuse.sluice.test",
                    "clientConfig": {"url": NOBODY},
                    "rules": [rule],
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 1,
                    "namespaceSelector": selector,
                }
            ],
        }
    )
    try:
        # The apiserver takes the configuration up from its informer: a dry-run write tells when.
        poll(lambda: all(not _write_taken(core, ns) for ns in namespaces), timeout=30, what="writes refused")
        yield
    finally:
        admission.delete_validating_webhook_configuration(name)
    poll(lambda: all(_write_taken(core, ns) for ns in namespaces), timeout=30, what="writes taken again")


def _write_taken(core: Any, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    probe = {"metadata": {"name": f"probe-{uuid.uuid4().hex[:8]}"}, "data": {"probe": "1"}}
    try:
        core.create_namespaced_config_map(namespace, probe, dry_run="All")
    except ApiException as exc:
        if exc.status == 500 and "failed calling webhook" in (exc.body or ""):
            return False
        raise
    return True


@contextmanager
def updates_denied(
    api_client: Any,
    namespace: str,
    *,
    expression: str,
    message: str,
    denied: Callable[[], bool],
    operations: tuple[str, ...] = ("UPDATE",),
) -> Iterator[None]:
    """A ValidatingAdmissionPolicy (CEL, run in the apiserver) that refuses ConfigMap ``operations``
    (updates, unless told) in ``namespace`` where ``expression`` is false, saying ``message``: a refusal
    for good, as a cluster's own policy gives, while inside. ``denied`` tells when the apiserver enforces
    it (a dry run)."""
    from kubernetes import client

    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"sluice-test-deny-{uuid.uuid4().hex[:8]}"
    rule = {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": list(operations),
        "resources": ["configmaps"],
    }
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "matchConstraints": {"resourceRules": [rule]},
                "validations": [{"expression": expression, "message": message}],
            },
        }
    )
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    binding = {
        "policyName": name,
        "validationActions": ["Deny"],
        "matchResources": {"namespaceSelector": selector},
    }
    admission.create_validating_admission_policy_binding({"metadata": {"name": name}, "spec": binding})
    try:
        poll(denied, timeout=30, what="the admission policy to take effect")
        yield
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)
