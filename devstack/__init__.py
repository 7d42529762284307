"""The embedded local stack: real etcd, kube-apiserver, Redis and PostgreSQL on loopback.

Development and test tooling only; the product never imports it.
"""

from devstack.stack import Stack, StackError

__all__ = ["Stack", "StackError"]
