"""The embedded local stack on loopback: real etcd, Redis, PostgreSQL and three Kubernetes clusters.

The default cluster (context ``local``) has kube-apiserver, kube-controller-manager,
kube-scheduler and kwok-simulated nodes; two member clusters (``member-1``,
``member-2``) are API servers on the same etcd under their own prefixes.

Development and test tooling only; the product never imports it.
"""

from devstack.stack import Stack, StackError

__all__ = ["Stack", "StackError"]
