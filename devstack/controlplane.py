"""The Kubernetes side of the embedded stack: how each part is started and how we talk to it.

Three clusters share one etcd, each under its own ``--etcd-prefix``:

- ``local``, the default cluster: kube-apiserver, kube-controller-manager,
  kube-scheduler and kwok, which turns Node objects into simulated nodes, so the
  pods of an ordinary Deployment are scheduled, "run" and become Ready.
- ``member-1`` and ``member-2``: a kube-apiserver each, and a kube-controller-manager
  that runs only what a cluster without nodes needs (see ``MEMBER_CONTROLLERS``).

devstack may not import ``kubernetes`` (only ``gitops.cluster`` does), so the few
requests the stack makes itself go through urllib with the admin certificate.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devstack.pki import ClusterCerts, KeyPair, Pki

DEFAULT_CLUSTER = "local"
MEMBER_CLUSTERS = ("member-1", "member-2")
CLUSTERS = (DEFAULT_CLUSTER, *MEMBER_CLUSTERS)
SIMULATED_NODES = ("sluice-node-1", "sluice-node-2")
# kwok manages only the nodes that carry this annotation, never a node someone else registers.
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# Room for many runs of the suite on one stack: tests leave their namespaces, and their pods, in place
# (a stack stays cheap that way), and three full runs filled nodes of kubelet's default 110 pods.
NODE_CAPACITY = {"cpu": "128", "memory": "512Gi", "pods": "1000", "ephemeral-storage": "100Gi"}

# The default cluster runs every controller a real one does, except:
# - root-ca-certificate-publisher: it puts a `kube-root-ca.crt` ConfigMap in every
#   namespace, and tests count the ConfigMaps of their namespaces;
# - the CSR signer, approver and cleaner, bootstrap signer and token cleaner: no
#   kubelet ever asks for a certificate or joins with a bootstrap token;
# - node-ipam, cloud and route controllers: no pod network, no cloud.
LOCAL_CONTROLLERS = (
    "*",
    "-root-ca-certificate-publisher-controller",
    "-certificatesigningrequest-signing-controller",
    "-certificatesigningrequest-approving-controller",
    "-certificatesigningrequest-cleaner-controller",
    "-bootstrap-signer-controller",
    "-token-cleaner-controller",
    "-node-ipam-controller",
    "-service-lb-controller",
    "-node-route-controller",
    "-cloud-node-lifecycle-controller",
)
# A member cluster holds ConfigMaps, ServiceAccounts and RBAC, never pods: it needs
# namespaces that can be deleted, the `default` ServiceAccount of each namespace, and
# long-lived token Secrets filled in (a kubeconfig for a member may be rendered from one).
# Measured idle cost: under 0.1 s of CPU a minute and about 72 MiB per member.
MEMBER_CONTROLLERS = ("namespace-controller", "serviceaccount-controller", "serviceaccount-token-controller")


def etcd_prefix(cluster: str) -> str:
    return "/registry" if cluster == DEFAULT_CLUSTER else f"/{cluster}/registry"


def apiserver_argv(
    binary: str, *, cluster: str, port: int, etcd_url: str, ca_cert: Path, certs: ClusterCerts
) -> list[str]:
    server = f"https://127.0.0.1:{port}"
    return [
        binary,
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={certs.serving.cert}",
        f"--tls-private-key-file={certs.serving.key}",
        f"--client-ca-file={ca_cert}",
        f"--etcd-servers={etcd_url}",
        f"--etcd-prefix={etcd_prefix(cluster)}",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        "--authorization-mode=RBAC",
        f"--service-account-key-file={certs.service_account_public}",
        f"--service-account-signing-key-file={certs.service_account_private}",
        f"--service-account-issuer={server}",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(
    binary: str,
    *,
    kubeconfig: Path,
    port: int,
    pki: Pki,
    certs: ClusterCerts,
    controllers: tuple[str, ...],
) -> list[str]:
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        # One instance per cluster: leader election would only renew a Lease every 2 s.
        "--leader-elect=false",
        # Not as on kubeadm, where each controller gets a ServiceAccount token: fetching ~40 of
        # them made every start 4-5 s slower on two cores. The controllers act as one user instead.
        "--use-service-account-credentials=false",
        f"--service-account-private-key-file={certs.service_account_private}",
        f"--root-ca-file={pki.ca_cert}",
        f"--controllers={','.join(controllers)}",
        # kwok reports a node's status about once a minute and keeps no Lease: with the default
        # 50 s grace the node lifecycle controller calls every node not-Ready now and then, and
        # marks every pod not Ready with it, which would flap every Deployment's availability.
        "--node-monitor-grace-period=10m",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={pki.components.cert}",
        f"--tls-private-key-file={pki.components.key}",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_argv(binary: str, *, kubeconfig: Path, port: int, pki: Pki) -> list[str]:
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={pki.components.cert}",
        f"--tls-private-key-file={pki.components.key}",
        "--profiling=false",
        "--v=1",
    ]


def kwok_argv(binary: str, *, kubeconfig: Path, config: Path) -> list[str]:
    key, value = KWOK_ANNOTATION
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        # Explicit, so that a developer's ~/.kwok/kwok.yaml never changes the stack.
        f"--config={config}",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        "--cidr=10.0.1.0/24",
        "--node-ip=127.0.0.1",
    ]


# With no Stage in it, kwok uses its built-in "fast" stages: a node is Ready at once, a pod
# bound to it is Running and Ready at once, and a deleted pod goes away at once.
KWOK_CONFIG = "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"


def simulated_node(name: str) -> dict[str, Any]:
    key, value = KWOK_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_CAPACITY},
    }


def write_kubeconfig(
    path: Path, *, ca_cert: Path, user: KeyPair, servers: dict[str, str], current: str
) -> None:
    """A kubeconfig with one context per cluster, each named like its cluster, all as ``user``."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": b64(ca_cert)}}
            for name, server in servers.items()
        ],
        "users": [
            {
                "name": user.cert.stem,
                "user": {"client-certificate-data": b64(user.cert), "client-key-data": b64(user.key)},
            }
        ],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": user.cert.stem}} for name in servers
        ],
        "current-context": current,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


class Api:
    """Just enough of a Kubernetes client for start-up: JSON in, status and JSON out."""

    def __init__(self, server: str, *, ca_cert: Path, client: KeyPair | None = None) -> None:
        self.server = server
        self._context = ssl.create_default_context(cafile=str(ca_cert))
        if client:
            self._context.load_cert_chain(str(client.cert), str(client.key))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.server + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=self._context) as response:
                return int(response.status), _json_or_none(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_or_none(exc.read())
        except OSError:
            return 0, None

    def status(self, path: str) -> int:
        return self.request("GET", path)[0]


def _json_or_none(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (a release's CRDs), empty ones left out."""
    import yaml  # the stack's Python has it (requirements.txt); only here is YAML read

    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def crds_established(api: Api, group: str) -> bool:
    """Whether every CRD of ``group`` is Established: its resources are served."""
    code, listed = api.request("GET", CRD_PATH)
    if code != 200:
        return False
    crds = [crd for crd in listed["items"] if crd["spec"]["group"] == group]
    # A CRD just created carries `"conditions": null` until the apiserver's controllers look at it.
    return bool(crds) and all(
        any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (crd.get("status") or {}).get("conditions") or ()
        )
        for crd in crds
    )


def rollouts_controller_argv(
    binary: str, *, kubeconfig: Path, metrics_port: int, healthz_port: int
) -> list[str]:
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        # One controller per stack: no Lease to take.
        "--leader-elect=false",
        f"--metricsPort={metrics_port}",
        f"--healthzPort={healthz_port}",
        "--loglevel=warn",
    ]


def ready_nodes(api: Api) -> set[str]:
    """Names of the simulated nodes that are Ready and carry no taint."""
    code, listed = api.request("GET", "/api/v1/nodes?labelSelector=type%3Dkwok")
    if code != 200:
        return set()
    ready = set()
    for node in listed["items"]:
        # As for a CRD, a node just registered may list `"conditions": null`.
        conditions = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or ()}
        if conditions.get("Ready") == "True" and not node["spec"].get("taints"):
            ready.add(node["metadata"]["name"])
    return ready
