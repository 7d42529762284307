"""update-cluster on the real stack: a registered cluster's --allow-unverified-tls granted or revoked in
place, with an audit row, while sources use the cluster. Before, the only way was to remove the cluster
and add it again, which is refused while a source targets it or holds objects there; and migration 0030
allowed every cluster whose kubeconfig the migrating host could not read, with nothing to revoke it.

Also: two forgets of one cluster at once (or a forget beside a removal) each wrote a "forget" row, the
second with nothing before it; the second is refused now. The member clusters are the stack's (contexts
``member-1`` and ``member-2``), reached through kubeconfigs the tests rewrite (``FlakyKubeconfig``)."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from gitops import cluster_admin
from gitops.cluster.client import ClusterRefused
from gitops.cluster.clients import ClusterClients, ClusterIdentityError, UnverifiedClusterError
from gitops.errors import PermanentError
from gitops.models import Cluster as ClusterRecord
from gitops.models import ClusterAudit
from gitops.record.audit import Actor
from tests.clusters import FlakyKubeconfig
from tests.gitrepo import GitRepo, configmap
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

DEFAULT = "default"  # the test settings' SLUICE_CLUSTER_NAME: the cluster KUBECONFIG names (context local)
ADMIN = Actor.command_line("tests")
SCOPE = ["t*", "edge/t*"]


def unverify(kubeconfig: FlakyKubeconfig) -> None:
    """The kubeconfig rewritten in place to skip the server's certificate check, its CA gone."""
    kubeconfig.cluster.pop("certificate-authority-data", None)
    kubeconfig.cluster.pop("certificate-authority", None)
    kubeconfig.cluster["insecure-skip-tls-verify"] = True
    kubeconfig.answer()


def update(name: str, *flags: str) -> str:
    """``gitops update-cluster NAME FLAGS... --by ines``, its output."""
    out = io.StringIO()
    call_command("gitops", "update-cluster", name, *flags, "--by", "ines", stdout=out)
    return out.getvalue()


def another_process() -> ClusterClients:
    """A registry of its own, as a worker's: it reads the registry only when told to (each pass)."""
    registry = ClusterClients()
    registry.refresh()
    return registry


def commit(repo: GitRepo, namespace: str, version: str) -> str:
    """The default cluster too: a pass none of whose clusters answers fails as a whole, and this one
    goes on without "edge", and says why."""
    document = {"targets": [{"cluster": cluster, "namespaces": [namespace]} for cluster in (DEFAULT, "edge")]}
    repo.write_all({"sluice.yaml": document, "configmaps/app.yaml": configmap("app", {"VERSION": version})})
    return repo.commit(f"v{version}")


def versions(cluster_for, namespace: str) -> list[str | None]:
    """The ConfigMap's version in the default cluster and in "edge" (member-1)."""
    return [
        (((cluster_for(context).get_configmap(namespace, "app") or {}).get("data")) or {}).get("VERSION")
        for context in ("local", "member-1")
    ]


def trail(name: str) -> list[tuple[str, str, str]]:
    return list(
        ClusterAudit.objects.filter(cluster=name).order_by("id").values_list("action", "actor", "via")
    )


# -- revoking and granting, in the processes that use the cluster --------------------------------------


def test_a_revoked_allowance_refuses_a_kubeconfig_rewritten_unverified_at_the_next_pass_and_probe(
    repo, make_source, sync, cluster_for, stack, tmp_path
):
    """A source writes to "edge" while it is allowed; the allowance is revoked while the source holds
    objects there (remove-cluster refused that); the kubeconfig, rewritten to skip the certificate check,
    is refused by the worker's next pass and the clusters page's next probe; granted again, it is used."""
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    cluster_admin.cluster_add(name="edge", kubeconfig=str(edge.path), actor=ADMIN)
    granted = update("edge", "--allow-unverified-tls")
    assert "cluster edge: --allow-unverified-tls granted" in granted
    assert "may reach the server without checking its certificate" in granted and "whoever answers" in granted
    assert "certificate now" in granted, "its kubeconfig checks the certificate still"
    namespace = f"t{uuid.uuid4().hex[:8]}"
    for context in ("local", "member-1"):
        cluster_for(context).create_namespace(namespace)
    commit(repo, namespace, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    unverify(edge)
    commit(repo, namespace, "2")
    applied = sync(source)
    assert (applied["outcome"], applied["errors"]) == ("applied", []), "allowed"
    assert versions(cluster_for, namespace) == ["2", "2"]
    with pytest.raises(PermanentError, match="is targeted by"):  # in use: remove and add is no remedy
        cluster_admin.cluster_remove("edge", actor=ADMIN)

    revoked = update("edge", "--no-allow-unverified-tls")

    assert "cluster edge: --allow-unverified-tls revoked" in revoked
    assert "its kubeconfig does so now" in revoked and "the cluster is refused" in revoked
    commit(repo, namespace, "3")
    refused = sync(source)
    errors = "\n".join(refused["errors"])
    assert "cluster edge unreachable" in errors and "without checking its certificate" in errors, refused
    assert versions(cluster_for, namespace) == ["3", "2"], "nothing sent to edge"
    status = next(s for s in cluster_admin.clusters_status() if s.name == "edge")
    assert not status.reachable and "without checking its certificate" in status.error

    update("edge", "--allow-unverified-tls")
    poll(
        lambda: sync(source) and versions(cluster_for, namespace) == ["3", "3"],
        timeout=60,
        interval=1,
        what="the worker to use the cluster again once allowed",
    )
    assert [action for action, _, _ in trail("edge")] == ["add", "update", "update", "update"]


def test_revoking_takes_effect_without_the_kubeconfig_changing_and_each_change_leaves_an_audit_row(
    stack, tmp_path
):
    """A cluster registered with --allow-unverified-tls (or allowed by migration 0030) whose kubeconfig
    skips the check: the allowance is part of the client's fingerprint, so a process that built the
    client while allowed builds it again at its next registry read, and refuses it."""
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    unverify(edge)
    cluster_admin.cluster_add(name="edge", kubeconfig=str(edge.path), allow_unverified_tls=True, actor=ADMIN)
    registered = ClusterRecord.objects.get(name="edge").registered_settings()
    worker = another_process()
    try:
        assert worker.get("edge").server_version(timeout=10)

        revoked = update("edge", "--no-allow-unverified-tls")
        assert "its kubeconfig does so now" in revoked
        worker.refresh()  # its next pass
        with pytest.raises(UnverifiedClusterError, match="cluster edge: its kubeconfig"):
            worker.get("edge")
        assert update("edge", "--no-allow-unverified-tls") == (
            "cluster edge: unchanged, --allow-unverified-tls is already revoked\n"
        )

        granted = update("edge", "--allow-unverified-tls")
        assert "it does so now, at https://" in granted
        worker.refresh()
        assert worker.get("edge").server_version(timeout=10), "not refused again from memory"
    finally:
        worker.forget()

    rows = list(ClusterAudit.objects.filter(cluster="edge").order_by("id"))
    assert [(r.action, r.actor, r.via) for r in rows] == [
        ("add", "tests", "cli"),
        ("update", "ines", "cli"),
        ("update", "ines", "cli"),
    ], "one row per change; the unchanged run wrote none"
    _, revoking, granting = rows
    allowed, refused = registered, {**registered, "allow_unverified_tls": False}
    assert (revoking.before, revoking.after) == (allowed, refused)
    assert (granting.before, granting.after) == (refused, allowed)
    assert revoking.message.startswith("revoked: ") and revoking.message.endswith("the cluster is refused")
    assert granting.message == (
        "granted: its kubeconfig may reach the server without checking its certificate; it does so now"
    )


def test_granting_loads_the_kubeconfig_first_and_revoking_needs_nothing_of_it(stack, tmp_path):
    """Granting is an administrator's deliberate act on credentials that work: refused, as add-cluster
    refuses, when the kubeconfig loads none or is not here. Revoking never needs the file (it may be
    mounted only where the workers run)."""
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    cluster_admin.cluster_add(name="edge", kubeconfig=str(edge.path), actor=ADMIN)
    user = edge.user
    failing = {"apiVersion": "client.authentication.k8s.io/v1", "command": "false"}
    edge.user = {"name": user["name"], "user": {"exec": failing}}  # a plugin that fails: no credentials
    edge.answer()
    with pytest.raises(CommandError, match="loads no credentials"):
        update("edge", "--allow-unverified-tls")
    edge.user = user
    edge.answer()
    update("edge", "--allow-unverified-tls")

    moved = edge.path.rename(tmp_path / "elsewhere.kubeconfig")
    with pytest.raises(CommandError, match="no kubeconfig file at"):
        update("edge", "--allow-unverified-tls")
    revoked = update("edge", "--no-allow-unverified-tls")
    assert "not known here" in revoked
    assert not ClusterRecord.objects.get(name="edge").allow_unverified_tls
    moved.rename(edge.path)
    assert [action for action, _, _ in trail("edge")] == ["add", "update", "update"], "refusals wrote none"


def test_an_unknown_name_or_the_default_cluster_is_refused(stack):
    for name, refusal in (("nonesuch", "no cluster named 'nonesuch'"), (DEFAULT, "is the default cluster")):
        for flag in ("--allow-unverified-tls", "--no-allow-unverified-tls"):
            with pytest.raises(CommandError, match=refusal):
                update(name, flag)
    assert not ClusterAudit.objects.exists()


# -- credentials moved: another kubeconfig or context that reaches the same cluster ---------------------


def test_new_credentials_reaching_the_same_cluster_are_taken_while_it_is_in_use_with_an_audit_row(
    repo, make_source, sync, cluster_for, stack, tmp_path
):
    """A source holds objects in "edge", so remove and add is refused; the registration moves to another
    kubeconfig that reaches the same cluster, and the next pass uses it: the old file, silenced, is no
    longer read."""
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    cluster_admin.cluster_add(name="edge", kubeconfig=str(edge.path), actor=ADMIN)
    namespace = f"t{uuid.uuid4().hex[:8]}"
    for context in ("local", "member-1"):
        cluster_for(context).create_namespace(namespace)
    commit(repo, namespace, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    rotated = FlakyKubeconfig(tmp_path / "rotated.kubeconfig", stack["KUBECONFIG"], "member-1")

    moved = update("edge", "--kubeconfig", str(rotated.path))

    assert f"cluster edge: credentials moved from {edge.path} to {rotated.path}" in moved
    assert "the same cluster (kube-system namespace uid " in moved
    record = ClusterRecord.objects.get(name="edge")
    assert (record.kubeconfig, record.context, record.allow_unverified_tls) == (str(rotated.path), "", False)
    edge.silence()
    commit(repo, namespace, "2")
    applied = sync(source)
    assert (applied["outcome"], applied["errors"]) == ("applied", []), applied
    assert versions(cluster_for, namespace) == ["2", "2"], "written through the new credentials"
    row = ClusterAudit.objects.filter(cluster="edge").order_by("id").last()
    assert (row.action, row.before["kubeconfig"], row.after["kubeconfig"]) == (
        "update",
        str(edge.path),
        str(rotated.path),
    )
    assert "credentials moved" in row.message and "the same cluster" in row.message


def test_new_credentials_are_refused_unless_both_they_and_the_current_ones_reach_the_same_cluster(
    stack, tmp_path
):
    """Another cluster would inherit this one's inventory, pending changes and owed rollbacks; credentials
    that do not answer, new or current, cannot tell; unverified ones need the allowance, as for add."""
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    cluster_admin.cluster_add(name="edge", kubeconfig=str(edge.path), actor=ADMIN)
    registered = (str(edge.path), "", False)

    def kept() -> tuple[str, str, bool]:
        record = ClusterRecord.objects.get(name="edge")
        return record.kubeconfig, record.context, record.allow_unverified_tls

    with pytest.raises(CommandError, match="reach another cluster"):
        update("edge", "--kubeconfig", stack["KUBECONFIG"], "--context", "member-2")
    assert "unchanged" in update("edge", "--kubeconfig", str(edge.path))
    silent = FlakyKubeconfig(tmp_path / "silent.kubeconfig", stack["KUBECONFIG"], "member-1")
    silent.silence()
    with pytest.raises(CommandError, match=r"the new credentials .* do not answer"):
        update("edge", "--kubeconfig", str(silent.path))
    unverified = FlakyKubeconfig(tmp_path / "unverified.kubeconfig", stack["KUBECONFIG"], "member-1")
    unverify(unverified)
    with pytest.raises(CommandError, match="without checking its certificate"):
        update("edge", "--kubeconfig", str(unverified.path))
    edge.silence()
    ClusterRecord.objects.filter(name="edge").update(identity="")  # as registered before identities were kept
    with pytest.raises(CommandError, match=r"current credentials .* do not answer.*rewrite the kubeconfig"):
        update("edge", "--kubeconfig", stack["KUBECONFIG"], "--context", "member-1")
    assert kept() == registered, "nothing changed"
    assert [action for action, _, _ in trail("edge")] == ["add"], "refusals wrote none"

    edge.answer()
    update("edge", "--kubeconfig", str(unverified.path), "--allow-unverified-tls")
    assert kept() == (str(unverified.path), "", True)
    update("edge", "--kubeconfig", stack["KUBECONFIG"], "--context", "member-1", "--no-allow-unverified-tls")
    assert kept() == (stack["KUBECONFIG"], "member-1", False)
    with pytest.raises(CommandError, match="reach another cluster"):
        update("edge", "--context", "member-2")  # alone: another context of the kubeconfig registered
    assert [action for action, _, _ in trail("edge")] == ["add", "update", "update"]


# -- the identity a registration was made for --------------------------------------------------------


def identity_of(cluster_for, context: str) -> str:
    return cluster_for(context).identity()


def test_a_kubeconfig_rewritten_in_place_to_reach_another_cluster_is_refused_until_pointed_back(
    repo, make_source, sync, cluster_for, stack, tmp_path
):
    """add-cluster records which cluster it registered (its kube-system namespace's uid). The kubeconfig,
    rewritten in place for another cluster, was used: the inventory, pending changes and rollbacks of
    "edge" were taken for that cluster's. Now the worker's next client build refuses it, and nothing is
    sent; pointed back, it is used again. Moving credentials needs only the recorded identity, so expired
    current credentials no longer stop it."""
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    out = io.StringIO()
    call_command("gitops", "add-cluster", "edge", "--kubeconfig", str(edge.path), "--by", "ines", stdout=out)
    member_1 = identity_of(cluster_for, "member-1")
    assert ClusterRecord.objects.get(name="edge").identity == member_1
    assert f"identity: kube-system namespace uid {member_1}" in out.getvalue()
    namespace = f"t{uuid.uuid4().hex[:8]}"
    for context in ("local", "member-1", "member-2"):
        cluster_for(context).create_namespace(namespace)
    commit(repo, namespace, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"

    FlakyKubeconfig(edge.path, stack["KUBECONFIG"], "member-2")  # the same file, another cluster's
    commit(repo, namespace, "2")
    refused = sync(source)

    errors = "\n".join(refused["errors"])
    assert "now reaches another cluster" in errors and f"registered for {member_1}" in errors, refused
    assert versions(cluster_for, namespace) == ["2", "1"]
    assert cluster_for("member-2").get_configmap(namespace, "app") is None, "nothing sent there"
    with pytest.raises(ClusterIdentityError, match="reaches another cluster"):
        another_process().get("edge")

    edge.answer()  # pointed back at member-1
    poll(
        lambda: sync(source) and versions(cluster_for, namespace) == ["2", "2"],
        timeout=60,
        interval=1,
        what="the worker to use the cluster again once its kubeconfig reaches it",
    )
    edge.silence()  # expired: the recorded identity is enough to move to new credentials
    rotated = FlakyKubeconfig(tmp_path / "rotated.kubeconfig", stack["KUBECONFIG"], "member-1")
    assert "credentials moved" in update("edge", "--kubeconfig", str(rotated.path))


def test_record_identity_records_one_registered_before_and_one_rebuilt_under_the_same_name(
    stack, cluster_for, tmp_path
):
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    cluster_admin.cluster_add(name="edge", kubeconfig=str(edge.path), actor=ADMIN)
    ClusterRecord.objects.filter(name="edge").update(identity="")  # registered before identities were kept
    member_1, member_2 = identity_of(cluster_for, "member-1"), identity_of(cluster_for, "member-2")
    another_process().get("edge")  # nothing recorded: nothing checked

    recorded = update("edge", "--record-identity")

    assert f"identity recorded, kube-system namespace uid {member_1} (was none)" in recorded
    assert f"unchanged, its identity is already kube-system namespace uid {member_1}" in update(
        "edge", "--record-identity"
    )
    FlakyKubeconfig(edge.path, stack["KUBECONFIG"], "member-2")  # "edge" rebuilt: a new kube-system
    with pytest.raises(PermanentError, match="reaches another cluster"):
        another_process().get("edge")
    # The reflex answer to that refusal, when the kubeconfig was in fact rewritten to another cluster,
    # recorded it: another identity takes --rebuilt (since 2026-12-07).
    with pytest.raises(
        CommandError, match=f"now reaches another cluster .*{member_2}.* than the one recorded"
    ):
        update("edge", "--record-identity")
    assert ClusterRecord.objects.get(name="edge").identity == member_1
    with pytest.raises(CommandError, match="--rebuilt goes with --record-identity"):
        update("edge", "--rebuilt")
    assert f"(was {member_1})" in update("edge", "--record-identity", "--rebuilt")
    assert another_process().get("edge").identity() == member_2
    edge.silence()
    with pytest.raises(CommandError, match="does not answer"):
        update("edge", "--record-identity")
    with pytest.raises(CommandError, match="goes alone"):
        update("edge", "--record-identity", "--no-allow-unverified-tls")
    rows = ClusterAudit.objects.filter(cluster="edge").order_by("id")
    assert [row.action for row in rows] == ["add", "update", "update"]
    assert (rows.last().before["identity"], rows.last().after["identity"]) == (member_1, member_2)


# -- races: the registry changed by two commands at once ----------------------------------------------


class Running:
    """``run`` on a thread of its own, as another process would (a connection of its own): what it
    returned or raised, in ``outcome``."""

    def __init__(self, run: Callable[[], Any]) -> None:
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(run,))

    def _run(self, run: Callable[[], Any]) -> None:
        try:
            self.outcome.append(run())
        except BaseException as exc:
            self.outcome.append(exc)
        finally:
            connection.close()

    def start(self) -> Running:
        self.thread.start()
        return self


class Held(Running):
    """Running, held in its audit row's write (the registry changed, not yet committed: the cluster's
    row locked, or deleted) until ``go_on``."""

    def __init__(self, monkeypatch, run: Callable[[], Any]) -> None:
        super().__init__(run)
        self.writing, self.go_on = threading.Event(), threading.Event()
        real = cluster_admin._cluster_audit

        def held(*args: Any, **kwargs: Any) -> None:
            if threading.current_thread() is self.thread:
                self.writing.set()
                assert self.go_on.wait(timeout=120), "the test lets it go on"
            real(*args, **kwargs)

        monkeypatch.setattr(cluster_admin, "_cluster_audit", held)

    def start(self) -> Held:
        super().start()
        assert self.writing.wait(timeout=60), "the first command to change the registry"
        return self


def beside(held: Held, run: Callable[[], Any]) -> Any:
    """``run`` while ``held`` is held, then ``held`` let go: what ``run`` returned or raised, once both
    ended. ``run`` either ends by itself or waits for a lock ``held`` holds."""
    second = Running(run).start()
    try:
        poll(
            lambda: second.outcome or _waiting_for_a_row_lock(),
            timeout=60,
            what="the second command to end, or to wait for the first",
        )
    finally:
        held.go_on.set()
        held.thread.join(timeout=120)
        second.thread.join(timeout=120)
    (outcome,) = second.outcome
    return outcome


def _waiting_for_a_row_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE %s)",
            ["%gitops_cluster%"],
        )
        return bool(cursor.fetchone()[0])


@pytest.fixture
def registered(stack) -> str:
    """The cluster "burned" (member-2), registered; no source targets it or holds anything there, so no
    reconcile lock keeps two commands on it apart: only the registry's row does."""
    cluster_admin.cluster_add(name="burned", kubeconfig=stack["KUBECONFIG"], context="member-2", actor=ADMIN)
    return "burned"


def test_a_second_forget_of_a_registered_cluster_at_the_same_time_is_refused(registered, monkeypatch):
    first = Held(
        monkeypatch,
        lambda: cluster_admin.cluster_forget(registered, actor=ADMIN, reason="the datacenter burned"),
    ).start()

    second = beside(first, lambda: cluster_admin.cluster_forget(registered, actor=ADMIN, reason="again"))

    assert not isinstance(first.outcome[0], BaseException), first.outcome
    assert isinstance(second, PermanentError) and "no cluster named 'burned'" in str(second), second
    forgot = ClusterAudit.objects.filter(cluster=registered, action="forget")
    assert forgot.count() == 1, [(row.message, row.before) for row in forgot]
    assert forgot.get().before["context"] == "member-2"
    assert not ClusterRecord.objects.filter(name=registered).exists()


def test_a_forget_beside_a_removal_is_refused(registered, monkeypatch):
    first = Held(monkeypatch, lambda: cluster_admin.cluster_remove(registered, actor=ADMIN)).start()

    second = beside(first, lambda: cluster_admin.cluster_forget(registered, actor=ADMIN, reason="gone"))

    assert first.outcome == [None]
    assert isinstance(second, PermanentError) and "no cluster named 'burned'" in str(second), second
    assert [action for action, _, _ in trail(registered)] == ["add", "remove"]


def test_an_update_beside_a_removal_is_refused_as_no_cluster(registered, monkeypatch):
    first = Held(monkeypatch, lambda: cluster_admin.cluster_remove(registered, actor=ADMIN)).start()

    second = beside(
        first, lambda: cluster_admin.cluster_update(registered, actor=ADMIN, allow_unverified_tls=True)
    )

    assert first.outcome == [None]
    assert isinstance(second, PermanentError) and "no cluster named 'burned'" in str(second), second
    assert [action for action, _, _ in trail(registered)] == ["add", "remove"]


def test_a_removal_beside_an_update_records_the_registration_it_removed(registered, monkeypatch):
    first = Held(
        monkeypatch, lambda: cluster_admin.cluster_update(registered, actor=ADMIN, allow_unverified_tls=True)
    ).start()

    second = beside(first, lambda: cluster_admin.cluster_remove(registered, actor=ADMIN))

    assert second is None, second
    removed = ClusterAudit.objects.get(cluster=registered, action="remove")
    assert removed.before["allow_unverified_tls"] is True, "what the update left, not what it replaced"


def test_the_default_cluster_is_refused_when_it_reaches_another_than_the_deployment_states(
    cluster_for, settings
):
    """Nothing records the default cluster's identity (it is never registered): the deployment states
    it (SLUICE_CLUSTER_IDENTITY), and a KUBECONFIG that reaches another cluster is then refused as a
    registered cluster's kubeconfig is. Unset, it is not checked, as before."""
    local, member_2 = identity_of(cluster_for, "local"), identity_of(cluster_for, "member-2")
    settings.SLUICE_CLUSTER_IDENTITY = member_2
    with pytest.raises(ClusterIdentityError) as refused:
        another_process().get(None)
    assert f"SLUICE_CLUSTER_IDENTITY says {member_2}" in str(refused.value)
    assert f"rebuilt: set SLUICE_CLUSTER_IDENTITY={local}" in str(refused.value)

    settings.SLUICE_CLUSTER_IDENTITY = local
    assert another_process().get(None).identity() == local
    settings.SLUICE_CLUSTER_IDENTITY = ""
    assert another_process().get(None).identity() == local


def limited_token(api_client: Any, namespace: str) -> str:
    """A ServiceAccount token of ``namespace`` that may read and write its ConfigMaps, and nothing else:
    not the kube-system namespace a cluster's identity is read from."""
    from kubernetes import client

    core, rbac = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "limited"}})
    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "patch"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "limited"}, "rules": [rule]})
    binding = {
        "metadata": {"name": "limited"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "limited"},
        "subjects": [{"kind": "ServiceAccount", "name": "limited", "namespace": namespace}],
    }
    rbac.create_namespaced_role_binding(namespace, binding)
    annotations = {"kubernetes.io/service-account.name": "limited"}
    secret = {"metadata": {"name": "limited-token", "annotations": annotations}}
    core.create_namespaced_secret(namespace, {**secret, "type": "kubernetes.io/service-account-token"})
    encoded = poll(
        lambda: (core.read_namespaced_secret("limited-token", namespace).data or {}).get("token"),
        timeout=30,
        what="the token controller to fill in the token",
    )
    import base64

    return base64.b64decode(encoded).decode()


def test_credentials_that_may_no_longer_read_the_clusters_identity_are_refused(
    cluster_for, stack, kube_client, tmp_path
):
    """Its identity was read through these very credentials when recorded. Rewritten to credentials
    that may not read it (another cluster's, with another role there, say), the client was used,
    unverified; it is refused now, and used again once its credentials can tell."""
    edge = FlakyKubeconfig(tmp_path / "edge.kubeconfig", stack["KUBECONFIG"], "member-1")
    call_command(
        "gitops", "add-cluster", "edge", "--kubeconfig", str(edge.path), "--by", "ines", stdout=io.StringIO()
    )
    member_1 = identity_of(cluster_for, "member-1")
    assert ClusterRecord.objects.get(name="edge").identity == member_1
    namespace = f"t{uuid.uuid4().hex[:8]}"
    token = limited_token(kube_client("member-1"), namespace)

    edge.with_token(token)
    with pytest.raises(ClusterIdentityError) as refused:
        another_process().get("edge")
    assert "which cluster its kubeconfig" in str(refused.value) and "cannot be told" in str(refused.value)
    assert f"when its identity was recorded ({member_1})" in str(refused.value)
    assert "narrowed on purpose: gitops update-cluster edge --clear-identity" in str(refused.value)
    edge.with_token("not-a-token")
    with pytest.raises(ClusterRefused):  # refused credentials say so, not which cluster they reach
        another_process().get("edge")

    edge.with_token(token)
    assert "identity cleared (was kube-system namespace uid" in update("edge", "--clear-identity")
    assert ClusterRecord.objects.get(name="edge").identity == ""
    assert another_process().get("edge").list_configmaps(namespace) == [], "narrowed on purpose: used"
    assert "unchanged, no identity is recorded" in update("edge", "--clear-identity")
    assert ClusterAudit.objects.filter(cluster="edge", message__startswith="identity cleared").count() == 1

    edge.answer()
    assert "identity recorded" in update("edge", "--record-identity")
    assert another_process().get("edge").identity() == member_1
    from kubernetes import client

    client.CoreV1Api(kube_client("member-1")).delete_namespace(namespace)
