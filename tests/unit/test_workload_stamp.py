"""A restart's stamp, as the apply of it reports a workload that is not there any more."""

from __future__ import annotations

from gitops.cluster import apply
from gitops.errors import PermanentError
from gitops.models import ApplyIntent


class Refusing:
    """A cluster that refuses the stamp's apply; ``present`` is whether the workload still exists."""

    def __init__(self, *, present: bool) -> None:
        self.present = present

    def apply_workload(self, body, *, field_manager, force):
        raise PermanentError('Deployment.apps "web" is invalid: spec.selector: Required value')

    def get_workload(self, kind, namespace, name):
        return {"kind": kind, "metadata": {"name": name}} if self.present else None


def stamp_intent() -> ApplyIntent:
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "a"}}
    return ApplyIntent(kind="Deployment", namespace="a", name="web", manifest=manifest)


def test_a_workload_deleted_before_its_restart_is_reported_gone_not_as_the_apiservers_refusal():
    """An apply to a missing workload is a create, refused as invalid (or forbidden for Sluice's
    account): the branch that said "is gone" never ran, and the refusal's text puzzled whoever read it."""
    assert apply._stamp_workload(Refusing(present=False), stamp_intent()) == "deployment a/web is gone"


def test_a_workload_still_there_keeps_the_apiservers_refusal():
    refusal = apply._stamp_workload(Refusing(present=True), stamp_intent())
    assert refusal is not None and "spec.selector: Required value" in refusal
