"""Which sources' passes a change to the cluster registry waits for (their scope reaches the cluster), and
the clusters page's shared probe answers, dropped when a cluster's registration changed underneath."""

from __future__ import annotations

import math

import pytest

from gitops import cluster_admin
from gitops.cluster.clients import ClusterRef


@pytest.mark.parametrize(
    ("globs", "reaches"),
    [
        (["member-*/t*"], True),
        (["*/team-a"], True),
        (["prod-eu/team-a", "t*"], False),  # another cluster, and the default one's namespaces
        (["t*"], False),  # a glob without a slash is the default cluster's
        ([], False),  # allows nothing yet: a revision naming the cluster writes nothing there
        (None, False),
        ("member-*/t*", False),  # not a list, as no administrator's scope is stored
        ([7, "member-1/x"], True),
    ],
)
def test_a_scope_reaches_a_cluster_when_one_of_its_globs_names_it(globs, reaches):
    assert cluster_admin.scope_reaches(globs, "member-1", "default") is reaches


def test_the_default_clusters_scope_is_its_slashless_globs():
    assert cluster_admin.scope_reaches(["t*"], "home", "home")
    assert not cluster_admin.scope_reaches(["other/t*"], "home", "home")


@pytest.fixture
def shared(monkeypatch):
    monkeypatch.setattr(cluster_admin, "_probed", {})
    monkeypatch.setattr(cluster_admin, "_probed_as", {})
    return cluster_admin._probed


ANSWER = (math.inf, ("https://member-1.example", "v1.31.0", ""))


def test_a_cluster_registered_again_elsewhere_is_probed_afresh(shared):
    """Another process removed the cluster and registered it again with another context: the answer this
    process shares was the old registration's server, shown as the new one's for as long as it lasted."""
    before = ClusterRef("moved", "/etc/sluice/kubeconfig", "member-1")
    cluster_admin._probes_renewed({"moved": before})
    shared["moved"] = ANSWER

    cluster_admin._probes_renewed({"moved": before})
    assert shared == {"moved": ANSWER}, "the same registration keeps its shared answer"

    cluster_admin._probes_renewed({"moved": ClusterRef("moved", "/etc/sluice/kubeconfig", "member-2")})
    assert "moved" not in shared


def test_a_cluster_removed_since_loses_its_shared_answer(shared):
    cluster_admin._probes_renewed({"gone": ClusterRef("gone", "/k", None)})
    shared["gone"] = ANSWER
    cluster_admin._probes_renewed({})
    assert "gone" not in shared
    assert cluster_admin._probed_as == {}
