"""A registered cluster's kubeconfig rewritten in place to skip the server's certificate check (or to plain
http) was used without a word: add-cluster checked it once, and the client was built again from the new
file whenever its fingerprint changed. Now each build checks it against what the registration allowed."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from gitops.cluster.clients import ClusterClients, ClusterRef, UnverifiedClusterError, default_ref

TOKEN = "s3cr3t-t0ken"


def write_kubeconfig(
    path: Path, *, server: str = "https://127.0.0.1:6443", verified: bool = True, token: bool = True
) -> Path:
    """A kubeconfig with a static token (or no credentials at all), rewritten in place as an
    administrator (or a sync job) would."""
    cluster: dict[str, object] = {"server": server}
    if verified:
        (path.parent / "ca.crt").write_text("a CA: never read, no request is made\n")
        cluster["certificate-authority"] = "ca.crt"
    else:
        cluster["insecure-skip-tls-verify"] = True
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": TOKEN} if token else {}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    stamp = time.time_ns()  # a new change time even within the clock's resolution
    os.utime(path, ns=(stamp, stamp))
    return path


def registry_of(ref: ClusterRef) -> ClusterClients:
    registry = ClusterClients()
    registry._refs = {ref.name: ref}
    return registry


def counting_connects(monkeypatch) -> list[str]:
    built: list[str] = []
    connect = ClusterRef.connect

    def counted(self, *, pool_size: int):
        built.append(self.name)
        return connect(self, pool_size=pool_size)

    monkeypatch.setattr(ClusterRef, "connect", counted)
    return built


def test_a_kubeconfig_rewritten_to_skip_the_certificate_check_is_refused_at_the_next_build(
    tmp_path, monkeypatch
):
    kubeconfig = tmp_path / "edge.kubeconfig"
    write_kubeconfig(kubeconfig)
    built = counting_connects(monkeypatch)
    registry = registry_of(ClusterRef("edge", str(kubeconfig), "x"))
    try:
        first = registry.get("edge")
        assert not first.unverified
        assert registry.get("edge") is first and built == ["edge"], "served from the cache"

        write_kubeconfig(kubeconfig, verified=False)
        with pytest.raises(UnverifiedClusterError) as refused:
            registry.get("edge")
        message = str(refused.value)
        assert "cluster edge" in message and str(kubeconfig) in message
        assert "insecure-skip-tls-verify" in message and "--allow-unverified-tls" in message
        assert TOKEN not in message
        assert "edge" not in registry._clients, "neither the refused client nor the one before is kept"

        with pytest.raises(UnverifiedClusterError):
            registry.get("edge")
        assert built == ["edge", "edge"], "refused again without building: the files did not change"

        write_kubeconfig(kubeconfig)  # given its CA again
        assert not registry.get("edge").unverified
    finally:
        registry.forget()


def test_a_kubeconfig_rewritten_to_plain_http_is_refused(tmp_path):
    kubeconfig = tmp_path / "edge.kubeconfig"
    write_kubeconfig(kubeconfig, server="http://127.0.0.1:8080", verified=False)
    registry = registry_of(ClusterRef("edge", str(kubeconfig), "x"))
    with pytest.raises(UnverifiedClusterError, match="over plain http"):
        registry.get("edge")
    assert registry._clients == {}


def test_a_cluster_registered_with_allow_unverified_tls_is_still_served(tmp_path):
    kubeconfig = tmp_path / "edge.kubeconfig"
    write_kubeconfig(kubeconfig, verified=False)
    registry = registry_of(ClusterRef("edge", str(kubeconfig), "x", allow_unverified_tls=True))
    try:
        assert registry.get("edge").unverified
    finally:
        registry.forget()


def test_the_allowance_is_part_of_the_fingerprint(tmp_path):
    """Removed and added again without the allowance between two refreshes of a process, a cluster kept
    the client built while it was allowed."""
    kubeconfig = tmp_path / "edge.kubeconfig"
    write_kubeconfig(kubeconfig, verified=False)
    allowed = ClusterRef("edge", str(kubeconfig), "x", allow_unverified_tls=True)
    registry = registry_of(allowed)
    try:
        registry.get("edge")
        registry._refs = {"edge": ClusterRef("edge", str(kubeconfig), "x")}
        assert allowed.fingerprint() != registry._refs["edge"].fingerprint()
        with pytest.raises(UnverifiedClusterError):
            registry.get("edge")
    finally:
        registry.forget()


def test_the_default_cluster_is_not_checked():
    """KUBECONFIG is the deployment's own setting, never registered through add-cluster."""
    assert default_ref().allow_unverified_tls


# -- the migration: what a cluster registered before it is allowed -----------------------------------

migration = importlib.import_module("gitops.migrations.0030_cluster_audit")


def test_the_migration_reads_whether_a_kubeconfig_reaches_its_server_unverified(tmp_path):
    kubeconfig = tmp_path / "edge.kubeconfig"
    write_kubeconfig(kubeconfig)
    assert migration._reaches_unverified(str(kubeconfig), "") is False
    assert migration._reaches_unverified(str(kubeconfig), "x") is False
    write_kubeconfig(kubeconfig, verified=False)
    assert migration._reaches_unverified(str(kubeconfig), "x") is True
    write_kubeconfig(kubeconfig, server="http://127.0.0.1:8080")
    assert migration._reaches_unverified(str(kubeconfig), "") is True
    # It cannot tell: the file is not on this host, the context is gone, the file is not a kubeconfig.
    assert migration._reaches_unverified(str(tmp_path / "missing"), "") is None
    assert migration._reaches_unverified(str(kubeconfig), "other") is None
    (tmp_path / "list").write_text("- a list\n")
    assert migration._reaches_unverified(str(tmp_path / "list"), "") is None


class FakeRows:
    """Just enough of a historical model's manager for the migration's backfill."""

    def __init__(self, rows: list[SimpleNamespace]) -> None:
        self.rows, self.allowed = rows, []

    def filter(self, **lookups):
        if "in_cluster" in lookups:
            return [row for row in self.rows if row.in_cluster == lookups["in_cluster"]]
        return SimpleNamespace(update=lambda **values: self.allowed.extend(lookups["pk__in"]))


def test_the_migration_allows_only_what_works_unverified_today_or_cannot_be_read(tmp_path):
    verified, unverified = tmp_path / "verified.kubeconfig", tmp_path / "unverified.kubeconfig"
    write_kubeconfig(verified)
    write_kubeconfig(unverified, verified=False)
    rows = FakeRows(
        [
            SimpleNamespace(pk=1, kubeconfig=str(verified), context="", in_cluster=False),
            SimpleNamespace(pk=2, kubeconfig=str(unverified), context="x", in_cluster=False),
            SimpleNamespace(pk=3, kubeconfig=str(tmp_path / "elsewhere"), context="", in_cluster=False),
            SimpleNamespace(pk=4, kubeconfig="", context="", in_cluster=True),
        ]
    )
    apps = SimpleNamespace(get_model=lambda app, model: SimpleNamespace(objects=rows))

    migration.allow_what_works_today(apps, None)

    assert rows.allowed == [2, 3]
