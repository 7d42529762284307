"""The embedded stack waits for Argo Rollouts' CRDs to be served before it starts Argo's controller."""

from __future__ import annotations

from typing import Any

from devstack.controlplane import crds_established


class ListedCrds:
    """Answers the CRD list as a kube-apiserver does (``devstack.controlplane.Api.request``)."""

    def __init__(self, *crds: dict[str, Any]) -> None:
        self.crds = list(crds)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return 200, {"items": self.crds}


def crd(group: str, status: dict[str, Any] | None) -> dict[str, Any]:
    listed: dict[str, Any] = {"spec": {"group": group}}
    if status is not None:
        listed["status"] = status
    return listed


ESTABLISHED = {"conditions": [{"type": "Established", "status": "True"}]}


def test_a_crd_just_created_with_null_conditions_is_not_established_yet():
    # What the apiserver answers for a moment after the create: make test's second stack met it as a
    # TypeError ('NoneType' object is not iterable), which failed the stack's start.
    just_created = crd("argoproj.io", {"conditions": None, "acceptedNames": {"kind": "", "plural": ""}})
    assert not crds_established(ListedCrds(just_created), "argoproj.io")
    assert not crds_established(ListedCrds(crd("argoproj.io", None)), "argoproj.io")
    assert not crds_established(ListedCrds(crd("argoproj.io", {"conditions": []})), "argoproj.io")


def test_every_crd_of_the_group_must_be_established_and_others_do_not_count():
    api = ListedCrds(crd("argoproj.io", ESTABLISHED), crd("argoproj.io", {"conditions": None}))
    assert not crds_established(api, "argoproj.io")
    api.crds[1] = crd("argoproj.io", ESTABLISHED)
    assert crds_established(api, "argoproj.io")
    assert not crds_established(ListedCrds(crd("example.com", ESTABLISHED)), "argoproj.io")
