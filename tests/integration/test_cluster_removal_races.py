"""Removing a cluster beside the passes that may write there, and the registry each process reads.

A pass reads the registry as it begins and validates, plans and writes with what it read; a web process,
a source removal or a preview that ran no pass lately holds whatever it read last. ``remove-cluster``
holds the reconcile locks of every source that may write to the cluster and checks again under them, and
each of those entry points reads the registry afresh. The member clusters are the stack's (contexts
``member-1`` and ``member-2``); "another process" is a registry of its own, or a row changed in the
database without telling this process."""

from __future__ import annotations

import io
import os
import threading
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from gitops import cluster_admin, preview, reconcile, schedule, source_admin
from gitops.cluster.clients import ClusterClients, clients
from gitops.errors import PermanentError
from gitops.locks import LOCK_CLASS, SourceBusy
from gitops.models import Cluster as ClusterRecord
from gitops.models import ClusterAudit, ManagedObject, Source
from gitops.plan import Action
from gitops.record.audit import Actor
from gitops.redaction import redact
from gitops.rollout import decisions
from gitops.vocabulary import ObjectsOnRemoval
from tests.gitrepo import GitRepo, configmap
from tests.passes import HeldPass
from tests.rollouts import wait_for
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

DEFAULT = "default"  # the test settings' SLUICE_CLUSTER_NAME: the cluster KUBECONFIG names (context local)
ADMIN = Actor.command_line("tests")
SCOPE = ["t*", "member-*/t*", "moved-*/t*"]


def commit(repo: GitRepo, namespace: str, clusters: list[str], version: str, **policy: Any) -> str:
    document: dict = {"targets": [{"cluster": c, "namespaces": [namespace]} for c in clusters], **policy}
    repo.write_all({"sluice.yaml": document, "configmaps/app.yaml": configmap("app", {"VERSION": version})})
    return repo.commit(f"v{version}")


def version_in(cluster_for, context: str, namespace: str) -> str | None:
    live = cluster_for(context).get_configmap(namespace, "app")
    return ((live or {}).get("data") or {}).get("VERSION")


def namespace_in(cluster_for, *contexts: str) -> str:
    import uuid

    name = f"t{uuid.uuid4().hex[:8]}"
    for context in contexts:
        cluster_for(context).create_namespace(name)
    return name


def registered_elsewhere(stack: dict[str, str], name: str, context: str) -> None:
    """``name`` removed and registered again at ``context`` by another process: the rows change, and
    this process is not told (no ``clients.forget`` or ``refresh`` here)."""
    ClusterRecord.objects.filter(name=name).delete()
    ClusterRecord.objects.create(name=name, kubeconfig=os.path.abspath(stack["KUBECONFIG"]), context=context)


# -- (a) a removal beside a pass ----------------------------------------------------------------------


def _waiting_for_the_lock(source_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND classid = %s AND objid = %s AND objsubid = 2)",
            [LOCK_CLASS, source_id],
        )
        return bool(cursor.fetchone()[0])


@pytest.mark.parametrize("narrowed", [False, True], ids=["scope-as-it-is", "scope-narrowed-meanwhile"])
def test_a_removal_waits_for_a_pass_that_may_write_to_the_cluster_and_is_refused_once_it_did(
    repo, make_source, cluster_for, stack, monkeypatch, narrowed
):
    """A pass read the registry and fetched a new revision that names member-1, which nothing named
    before: no policy targeted it and Sluice held nothing there. A removal then found nothing against it
    and removed the cluster, and the pass, with the registry it read before, validated the revision and
    wrote there: objects in a cluster Sluice no longer knows, which it can neither prune nor roll back.
    The removal now waits for the pass (the source's scope reaches the cluster, or reached it: a pass
    under way validates with the scope it read as it began, before an administrator narrowed it), checks
    again, and is refused."""
    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # every pass runs here
    cluster_admin.cluster_add(
        name="member-1", kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN
    )
    namespace = namespace_in(cluster_for, "local", "member-1")
    commit(repo, namespace, [DEFAULT], "1")
    source = make_source(allowed_namespaces=SCOPE)
    reconcile.source_sync(source.pk)
    assert version_in(cluster_for, "local", namespace) == "1"
    commit(repo, namespace, [DEFAULT, "member-1"], "2")
    # The removal in a process of its own: what it tells its own registry, the pass's does not hear.
    monkeypatch.setattr(cluster_admin, "clients", ClusterClients())
    held = HeldPass(monkeypatch, source)
    outcome: list[BaseException | None] = []

    def remove() -> None:
        try:
            cluster_admin.cluster_remove("member-1", actor=ADMIN)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)
        finally:
            connection.close()

    removing = threading.Thread(target=remove)
    held.thread.start()
    try:
        assert held.validating.wait(timeout=120), "the pass to read the registry and fetch v2"
        if narrowed:
            source_admin.source_update_scope(source, allowed_namespaces=["t*"])
        removing.start()
        poll(
            lambda: outcome or _waiting_for_the_lock(source.pk),
            timeout=60,
            what="the removal to wait for the pass, or to end",
        )
    finally:
        held.go_on.set()
        held.thread.join(timeout=120)
        if removing.ident is not None:  # started
            removing.join(timeout=120)

    assert held.error is None, held.error
    registered = ClusterRecord.objects.filter(name="member-1").exists()
    kept = ManagedObject.objects.filter(cluster="member-1").count()
    assert registered or not kept, f"Sluice holds {kept} object(s) in a cluster it no longer knows"
    # Narrowed meanwhile, the pass validates with the scope it read as it began, and its step, which
    # reads the scope again before each weight, writes nothing there: still a policy that names it.
    written = version_in(cluster_for, "member-1", namespace)
    assert written == (None if narrowed else "2"), "the pass wrote there, unless its scope narrowed"
    assert len(outcome) == 1 and isinstance(outcome[0], PermanentError), outcome
    assert "targeted by" in str(outcome[0])
    assert registered
    assert not ClusterAudit.objects.filter(cluster="member-1", action="remove").exists()


def test_a_cluster_an_active_rollout_wrote_to_is_not_removed_under_it(
    repo, make_source, sync, fleet_scope, people
):
    """A rollout pruned its last object in member-1 at its 100% step and waits for approval: no policy
    targets the cluster any more, and Sluice holds nothing there. Removed then, the cluster was gone
    when the rollout was aborted, and its rollback, which puts the object back there, had nowhere to go."""
    cluster_for, namespace = fleet_scope
    commit(repo, namespace, [DEFAULT, "member-1"], "1", prune=True)
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    assert version_in(cluster_for, "member-1", namespace) == "1"
    commit(
        repo, namespace, [DEFAULT], "2", prune=True, rollout={"steps": [{"setWeight": 100}, {"pause": {}}]}
    )
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert version_in(cluster_for, "member-1", namespace) is None, "pruned at 100%"
    assert not ManagedObject.objects.filter(cluster="member-1").exists()
    assert Source.objects.get(pk=source.pk).target_clusters == [DEFAULT]

    with pytest.raises(PermanentError, match=rf"rollout\(s\) {paused.pk} wrote to cluster 'member-1'"):
        cluster_admin.cluster_remove("member-1", actor=ADMIN)

    assert ClusterRecord.objects.filter(name="member-1").exists()
    decisions.rollout_abort(paused.pk, user=people["approver"])
    wait_for(source, phase="Aborted")
    assert version_in(cluster_for, "member-1", namespace) == "1", "the rollback needed the cluster"


@pytest.fixture
def fleet_scope(cluster_for, stack):
    """member-1 registered, and a fresh namespace in the default cluster and in member-1."""
    cluster_admin.cluster_add(
        name="member-1", kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN
    )
    return cluster_for, namespace_in(cluster_for, "local", "member-1")


def test_a_cluster_removed_while_sluice_kept_objects_there_can_still_be_forgotten(
    repo, make_source, sync, fleet_scope
):
    """What a removal raced by a pass left (before removals waited for passes): the cluster's row gone,
    Sluice's objects there still in its inventory, and the source's rollout waiting for the cluster to
    prune there. Nothing let them go: `--forget` said "no cluster named". It forgets them now."""
    cluster_for, namespace = fleet_scope
    commit(repo, namespace, [DEFAULT, "member-1"], "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    ClusterRecord.objects.filter(name="member-1").delete()  # as the race left it
    commit(repo, namespace, [DEFAULT], "2")
    sync(source)
    wait_for(source, phase="Paused", waiting_for="cluster")
    with pytest.raises(PermanentError, match="no cluster named"):
        cluster_admin.cluster_forget("nonesuch", actor=ADMIN, reason="never was")

    out = io.StringIO()
    call_command(
        "gitops", "remove-cluster", "member-1", "--forget", "--reason", "removed under a pass", stdout=out
    )

    assert f"objects no longer managed there: {source.name} (1)" in out.getvalue()
    assert not ManagedObject.objects.filter(cluster="member-1").exists()
    assert version_in(cluster_for, "member-1", namespace) == "1", "left as it is, no longer Sluice's"
    forgot = ClusterAudit.objects.get(cluster="member-1", action="forget")
    assert forgot.before is None, "nothing was registered under the name any more"
    sync(source)
    wait_for(source, phase="Completed")


def test_another_cluster_is_not_added_under_a_name_sluice_still_keeps_state_for(
    repo, make_source, sync, fleet_scope, stack
):
    """A removal raced by a pass left Sluice's inventory under member-1. Adding another cluster under that
    name took it all over: its identity was recorded at the add, so its own check passed, and a rollback
    created member-1's content there. The cluster that was registered under the name may come back."""
    _, namespace = fleet_scope
    commit(repo, namespace, [DEFAULT, "member-1"], "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    registered = ClusterRecord.objects.get(name="member-1")
    registered.delete()  # as the race left it
    # A later row of the trail without an identity (cleared, or registered while it did not answer):
    # the newest identity recorded still tells the cluster.
    ClusterAudit.objects.create(
        cluster="member-1",
        action="update",
        actor="tests",
        via="cli",
        after={**registered.registered_settings(), "identity": ""},
    )

    with pytest.raises(PermanentError, match="cannot be told to be the one they belong to"):
        cluster_admin.cluster_add(
            name="member-1", kubeconfig=stack["KUBECONFIG"], context="member-2", actor=ADMIN
        )
    assert not ClusterRecord.objects.filter(name="member-1").exists()

    back = cluster_admin.cluster_add(
        name="member-1", kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN
    )
    assert back.identity == registered.identity, "the same cluster, back under its name"
    assert ManagedObject.objects.filter(cluster="member-1", source=source).exists()


# -- (b) the registry as it is now --------------------------------------------------------------------


def test_a_source_removal_prunes_through_the_registry_as_it_is_now(
    repo, make_source, sync, cluster_for, stack, monkeypatch
):
    """The process that runs a removal had read the registry when "moved-removal" was member-1; another
    process removed it and registered it again at member-2, where the source's passes then wrote. The
    removal read and pruned member-1 (nothing of the source's there), let the inventory go and deleted
    the source: member-2's object stayed, no longer anyone's to prune."""
    from gitops.source_removal import source_removal_run

    name = "moved-removal"
    cluster_admin.cluster_add(name=name, kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN)
    registered_elsewhere(stack, name, "member-2")
    assert clients.ref(name).context == "member-1", "this process read the registry before"
    namespace = namespace_in(cluster_for, "member-1", "member-2")
    commit(repo, namespace, [name], "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"  # a worker: it reads the registry as it is now
    assert version_in(cluster_for, "member-2", namespace) == "1"
    monkeypatch.setattr(schedule, "source_removal", lambda removal_id: None)  # run here, not on a worker
    removal = source_admin.source_remove(source, objects=ObjectsOnRemoval.PRUNE)

    def attempt():
        try:
            return source_removal_run(removal.pk)
        except SourceBusy:  # the worker's pass may still be letting the lock go
            return None

    done = poll(attempt, timeout=60, what="the source's lock to be free for its removal")

    assert done.status == "done", done.message
    assert version_in(cluster_for, "member-2", namespace) is None, "pruned where the cluster is now"


def test_a_preview_plans_against_the_registry_as_it_is_now(repo, make_source, sync, cluster_for, stack):
    """A preview (``gitops diff``, the worker's "Preview a revision") in a process that read the registry
    before "moved-preview" was registered again elsewhere planned against the old server: it showed the
    object the source holds at the new one as to be created."""
    name = "moved-preview"
    cluster_admin.cluster_add(name=name, kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN)
    registered_elsewhere(stack, name, "member-2")
    assert clients.ref(name).context == "member-1", "this process read the registry before"
    namespace = namespace_in(cluster_for, "member-1", "member-2")
    head = commit(repo, namespace, [name], "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    source = Source.objects.get(pk=source.pk)

    planned = preview.source_preview(source).plan
    revised = preview.revision_preview(source, head).plan

    for plan in (planned, revised):
        assert plan is not None
        assert [(i.cluster, i.action) for i in plan.items] == [(name, Action.UNCHANGED)], plan.items


def test_the_clusters_page_probes_the_registry_as_it_is_now(cluster_for, stack):
    """A web process reads the registry only when a name is new to it: a cluster another process removed
    and registered again, at another server, was probed through the old registration, and that answer
    was shared as the new one's."""
    name = "moved-probe"

    def shown() -> cluster_admin.ClusterStatus:
        return next(status for status in cluster_admin.clusters_status() if status.name == name)

    cluster_admin.cluster_add(name=name, kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN)
    assert shown().server == redact(cluster_for("member-1").server)
    registered_elsewhere(stack, name, "member-2")

    now = shown()

    assert now.reachable, now.error
    assert now.server == redact(cluster_for("member-2").server)
    assert now.credentials.endswith("(context member-2)")
