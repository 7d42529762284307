"""update-cluster: a registered cluster's --allow-unverified-tls granted or revoked in place. Removing and
adding the cluster again, the only way before, is refused while the cluster is in use, which is when the
allowance matters; and migration 0030 granted it to every cluster whose kubeconfig the migrating host
could not read, with nothing to revoke it. What runs without a database is checked here; the registry
change, its audit row and its races are in tests/integration/test_update_cluster.py."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.core.management import CommandError

from gitops import cluster_admin
from gitops.cluster.clients import ClusterClients, ClusterRef, UnverifiedClusterError
from gitops.errors import PermanentError
from gitops.management.commands.gitops import Command, _allowance_lines
from gitops.models import Cluster as ClusterRecord
from gitops.models import ClusterAudit
from gitops.record.audit import Actor
from gitops.vocabulary import ClusterAuditAction
from tests.unit.test_cluster_unverified import FakeRows, write_kubeconfig

clients_module = importlib.import_module(
    "gitops.cluster.clients"
)  # the module; the package exports the registry


def record_at(kubeconfig: Path | str, *, allowed: bool = False) -> ClusterRecord:
    return ClusterRecord(name="edge", kubeconfig=str(kubeconfig), context="x", allow_unverified_tls=allowed)


# -- the command line -------------------------------------------------------------------------------


def parsed(*args: str):
    return Command().create_parser("manage.py", "gitops").parse_args(["update-cluster", "edge", *args])


def test_update_cluster_grants_or_revokes_or_moves_credentials_and_must_say_what():
    assert parsed("--allow-unverified-tls").allow_unverified_tls is True
    assert parsed("--no-allow-unverified-tls", "--by", "ines").allow_unverified_tls is False
    moved = parsed("--kubeconfig", "/etc/k", "--context", "c")
    assert (moved.kubeconfig, moved.context, moved.in_cluster, moved.allow_unverified_tls) == (
        "/etc/k",
        "c",
        False,
        None,
    )
    with pytest.raises((SystemExit, CommandError)):
        parsed("--kubeconfig", "/etc/k", "--in-cluster")
    assert parsed().allow_unverified_tls is None
    with pytest.raises(PermanentError, match="nothing to change"):
        cluster_admin.cluster_update("edge", actor=Actor.command_line("tests"))


def test_the_default_cluster_is_not_registered_and_has_no_allowance_to_change():
    with pytest.raises(PermanentError, match="is the default cluster"):
        cluster_admin.cluster_update(
            settings.SLUICE_CLUSTER_NAME, actor=Actor.command_line("tests"), allow_unverified_tls=False
        )


def test_the_audit_trail_has_an_action_for_it():
    assert ClusterAuditAction("update") is ClusterAuditAction.UPDATE
    assert ("update", "update") in ClusterAudit._meta.get_field("action").choices


# -- what granting loads, and what revoking can tell ------------------------------------------------


def test_granting_loads_the_kubeconfig_as_add_cluster_does(tmp_path):
    with pytest.raises(PermanentError, match="no kubeconfig file at"):
        cluster_admin._granting_loads(record_at(tmp_path / "elsewhere.kubeconfig"))
    bare = write_kubeconfig(tmp_path / "bare.kubeconfig", token=False)
    with pytest.raises(PermanentError, match="loads no credentials"):
        cluster_admin._granting_loads(record_at(bare))

    kubeconfig = write_kubeconfig(
        tmp_path / "edge.kubeconfig", server="https://deploy:hunter2@127.0.0.1:6443", verified=False
    )
    record = record_at(kubeconfig)
    unverified, server = cluster_admin._granting_loads(record)
    assert unverified and "hunter2" not in server and "127.0.0.1:6443" in server
    assert record.allow_unverified_tls is False, "checked as granted, the row itself untouched"
    write_kubeconfig(kubeconfig)
    assert cluster_admin._granting_loads(record)[0] is False


def test_revoking_tells_whether_the_kubeconfig_reaches_its_server_unverified_now_where_it_can(tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "edge.kubeconfig", verified=False)
    assert cluster_admin._unverified_now(record_at(kubeconfig)) == (True, "https://127.0.0.1:6443")
    write_kubeconfig(kubeconfig, server="http://127.0.0.1:8080", verified=False)
    assert cluster_admin._unverified_now(record_at(kubeconfig))[0] is True
    write_kubeconfig(kubeconfig)
    assert cluster_admin._unverified_now(record_at(kubeconfig))[0] is False
    # Not on this host, or not a kubeconfig: revoking never needs the file, and says it cannot tell.
    assert cluster_admin._unverified_now(record_at(tmp_path / "elsewhere")) == (None, "")
    (tmp_path / "list").write_text("- a list\n")
    assert cluster_admin._unverified_now(record_at(tmp_path / "list")) == (None, "")


def test_the_audit_message_says_what_the_change_lets_through_or_stops():
    assert cluster_admin._allowance_text(True, True) == (
        "granted: its kubeconfig may reach the server without checking its certificate; it does so now"
    )
    assert cluster_admin._allowance_text(True, False).endswith("; it checks the certificate now")
    assert cluster_admin._allowance_text(False, True).endswith("; it does so now: the cluster is refused")
    assert cluster_admin._allowance_text(False, None) == (
        "revoked: a kubeconfig that reaches the server without checking its certificate is refused"
    )


def test_the_output_says_what_granting_allows_and_what_revoking_stops(tmp_path):
    record = record_at(tmp_path / "edge.kubeconfig", allowed=True)
    server = "https://127.0.0.1:6443"
    granted = "\n".join(_allowance_lines(cluster_admin.ClusterUpdate(record, True, True, server), True))
    assert "cluster edge: --allow-unverified-tls granted" in granted
    assert "without checking its certificate" in granted and "whoever answers" in granted
    assert f"it does so now, at {server}" in granted and "next registry read" in granted
    checked = "\n".join(_allowance_lines(cluster_admin.ClusterUpdate(record, True, False, server), True))
    assert "certificate now" in checked and "used, not refused" in checked

    record.allow_unverified_tls = False
    revoked = _allowance_lines(cluster_admin.ClusterUpdate(record, True, True, server), False)
    assert revoked[0] == "cluster edge: --allow-unverified-tls revoked"
    assert "is refused by every process from its next registry read" in revoked[1]
    assert "the cluster is refused until the kubeconfig has the cluster's CA again" in revoked[2]
    unknown = _allowance_lines(cluster_admin.ClusterUpdate(record, True, None), False)
    assert "not known here" in unknown[2]
    assert _allowance_lines(cluster_admin.ClusterUpdate(record, False, None), False) == [
        "cluster edge: unchanged, --allow-unverified-tls is already revoked"
    ]


# -- taking effect: what the update relies on in every process (gitops/cluster/clients.py) ----------


def test_a_revocation_refuses_the_client_at_the_next_registry_read_and_a_grant_serves_it_again(
    tmp_path, monkeypatch
):
    """A process that built the client while allowed: each pass reads the registry again, and the
    allowance is part of the client's fingerprint, so its next use builds it again, and checks."""
    kubeconfig = str(write_kubeconfig(tmp_path / "edge.kubeconfig", verified=False))
    registered = {"edge": ClusterRef("edge", kubeconfig, "x", allow_unverified_tls=True)}
    monkeypatch.setattr(clients_module, "registered_refs", lambda: dict(registered))
    registry = ClusterClients()
    try:
        registry.refresh()
        assert registry.get("edge").unverified

        registered["edge"] = ClusterRef("edge", kubeconfig, "x")  # update-cluster --no-allow-unverified-tls
        registry.refresh()
        with pytest.raises(UnverifiedClusterError):
            registry.get("edge")
        assert "edge" not in registry._clients

        registered["edge"] = ClusterRef("edge", kubeconfig, "x", allow_unverified_tls=True)  # granted again
        registry.refresh()
        assert registry.get("edge").unverified, "not refused again from memory: the fingerprint changed"
    finally:
        registry.forget()


# -- migration 0030 says which clusters it allowed --------------------------------------------------

migration = importlib.import_module("gitops.migrations.0030_cluster_audit")


def backfill(rows: list[SimpleNamespace]) -> FakeRows:
    fake = FakeRows(rows)
    migration.allow_what_works_today(
        SimpleNamespace(get_model=lambda app, model: SimpleNamespace(objects=fake)), None
    )
    return fake


def test_the_migration_names_the_clusters_it_allowed_and_why(tmp_path, capsys):
    verified = write_kubeconfig(tmp_path / "verified.kubeconfig")
    unverified = write_kubeconfig(tmp_path / "unverified.kubeconfig", verified=False)
    elsewhere = tmp_path / "elsewhere.kubeconfig"
    fake = backfill(
        [
            SimpleNamespace(pk=1, name="checked", kubeconfig=str(verified), context="", in_cluster=False),
            SimpleNamespace(pk=2, name="edge", kubeconfig=str(unverified), context="x", in_cluster=False),
            SimpleNamespace(pk=3, name="far", kubeconfig=str(elsewhere), context="", in_cluster=False),
            SimpleNamespace(pk=4, name="here", kubeconfig="", context="", in_cluster=True),
        ]
    )

    assert fake.allowed == [2, 3]
    said = capsys.readouterr().out
    assert "      edge: its kubeconfig does so now\n" in said
    assert f"      far: its kubeconfig {elsewhere} could not be read (or parsed) on this host\n" in said
    assert "checked:" not in said and "here:" not in said
    assert "gitops update-cluster NAME --no-allow-unverified-tls" in said


def test_the_migration_says_nothing_when_it_allowed_nothing(tmp_path, capsys):
    verified = write_kubeconfig(tmp_path / "verified.kubeconfig")
    fake = backfill(
        [SimpleNamespace(pk=1, name="checked", kubeconfig=str(verified), context="", in_cluster=False)]
    )
    assert fake.allowed == []
    assert capsys.readouterr().out == ""
