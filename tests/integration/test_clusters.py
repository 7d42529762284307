"""Many clusters on the real stack: the default cluster (context ``local``) and the two member clusters,
each a kube-apiserver of its own; a rollout goes cluster by cluster, a flag rollout serves the same users
in every cluster, and a cluster that stops answering fails only its own targets."""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from gitops import cluster_admin, selectors
from gitops.cluster import clients, pools
from gitops.cluster.live import live_configmaps
from gitops.models import Change, Rollout, RolloutEvent, Source
from gitops.models import Cluster as ClusterRecord
from gitops.record.audit import Actor
from gitops.rollout import decisions
from tests.clusters import FlakyKubeconfig, HungServer
from tests.flagd import EVALUATORS, KEYS
from tests.gitrepo import GitRepo, configmap, policy
from tests.rollouts import wait_for
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

DEFAULT = "default"  # the test settings' SLUICE_CLUSTER_NAME: the cluster KUBECONFIG names (context local)
CONTEXT_OF = {DEFAULT: "local", "member-1": "member-1", "member-2": "member-2"}
ADMIN = Actor.command_line("tests")  # who registers and removes the tests' clusters, for the audit trail


class Fleet:
    def __init__(self, stack: dict[str, str], cluster_for, tmp_path: Path) -> None:
        self.stack, self.cluster_for, self.tmp_path = stack, cluster_for, tmp_path
        self.contexts = dict(CONTEXT_OF)

    def register(self, name: str, context: str | None = None) -> None:
        cluster_admin.cluster_add(
            name=name, kubeconfig=self.stack["KUBECONFIG"], context=context or name, actor=ADMIN
        )

    def flaky(self, name: str, context: str) -> FlakyKubeconfig:
        """Registers ``name``: member cluster ``context`` through a kubeconfig the test can re-point."""
        kubeconfig = FlakyKubeconfig(self.tmp_path / f"{name}.kubeconfig", self.stack["KUBECONFIG"], context)
        cluster_admin.cluster_add(name=name, kubeconfig=str(kubeconfig.path), actor=ADMIN)
        self.contexts[name] = context
        return kubeconfig

    def namespace(self, clusters=(DEFAULT, "member-1", "member-2")) -> str:
        """A fresh namespace of the same name in each cluster."""
        name = f"t{uuid.uuid4().hex[:8]}"
        for cluster in clusters:
            self.cluster_for(self.contexts.get(cluster, cluster)).create_namespace(name)
        return name

    def content(self, cluster: str, namespace: str, name: str = "app") -> dict | None:
        """What a ConfigMap holds, read through the cluster's own server: data, labels, annotations."""
        live = self.cluster_for(self.contexts[cluster]).get_configmap(namespace, name)
        if live is None:
            return None
        metadata = live["metadata"]
        return {
            "data": live.get("data"),
            "labels": metadata.get("labels"),
            "annotations": metadata.get("annotations"),
        }

    def versions(self, clusters: list[str], namespace: str) -> list[str | None]:
        return [((self.content(c, namespace) or {}).get("data") or {}).get("VERSION") for c in clusters]


@pytest.fixture
def fleet(stack, cluster_for, tmp_path) -> Fleet:
    return Fleet(stack, cluster_for, tmp_path)


def targets(namespace: str, clusters: list[str]) -> list[dict]:
    return [{"cluster": cluster, "namespaces": [namespace]} for cluster in clusters]


def commit(repo: GitRepo, namespace: str, clusters: list[str], version: str, steps=None) -> str:
    document: dict = {"targets": targets(namespace, clusters)}
    if steps:
        document["rollout"] = {"steps": steps}
    repo.write_all({"sluice.yaml": document, "configmaps/app.yaml": configmap("app", {"VERSION": version})})
    return repo.commit(f"v{version}")


SCOPE = ["t*", "member-*/t*", "flaky/t*"]


class Owed:
    """A source whose v2 rollout was aborted while the cluster "flaky" did not answer: it owes flaky
    its rollback (``aborted_owing_flaky``)."""

    def __init__(self, source, namespace: str, clusters: list[str], v2: str, aborted, flaky) -> None:
        self.source, self.namespace, self.clusters = source, namespace, clusters
        self.v2, self.aborted, self.flaky = v2, aborted, flaky

    def answering_before_its_retry(self) -> Owed:
        """flaky answers again while the rollback's retry is far off (a long SLUICE_CLUSTER_RETRY_SECONDS)."""
        from datetime import timedelta

        from django.utils import timezone

        Rollout.objects.filter(pk=self.aborted.pk).update(pause_until=timezone.now() + timedelta(hours=1))
        self.flaky.answer()
        return self


def aborted_owing_flaky(repo, make_source, sync, fleet, people, clusters: list[str], weight: int) -> Owed:
    """v1 everywhere; v2 at ``weight`` (flaky in its first wave), paused at its gate; then flaky stops
    answering and the rollout is aborted, so it owes flaky its rollback."""
    flaky = fleet.flaky("flaky", context="member-2")
    namespace = fleet.namespace(tuple(clusters))
    commit(repo, namespace, clusters, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    v2 = commit(repo, namespace, clusters, "2", [{"setWeight": weight}, {"pause": {}}])
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    flaky.silence()
    decisions.rollout_abort(paused.pk, user=people["approver"])
    aborted = wait_for(source, phase="Aborted")
    assert aborted.rollback_pending_clusters == ["flaky"]
    return Owed(source, namespace, clusters, v2, aborted, flaky)


def test_a_rollout_goes_cluster_by_cluster_and_an_abort_restores_every_cluster(
    repo, make_source, sync, fleet, people
):
    fleet.register("member-1")
    fleet.register("member-2")
    clusters = [DEFAULT, "member-1", "member-2"]
    namespace = fleet.namespace()
    commit(repo, namespace, clusters, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    before = {cluster: fleet.content(cluster, namespace) for cluster in clusters}
    assert fleet.versions(clusters, namespace) == ["1", "1", "1"]

    steps = [{"setWeight": 33}, {"pause": {}}, {"setWeight": 66}, {"pause": {}}, {"setWeight": 100}]
    v2 = commit(repo, namespace, clusters, "2", steps)
    sync(source)
    first = wait_for(source, phase="Paused", waiting_for="approval", step_index=1)
    assert fleet.versions(clusters, namespace) == ["2", "1", "1"], "the first wave is the first cluster"

    decisions.rollout_promote(first.pk, user=people["approver"])
    wait_for(source, phase="Paused", waiting_for="approval", step_index=3)
    assert fleet.versions(clusters, namespace) == ["2", "2", "1"], "a promote moves it to the next cluster"
    logged = Change.objects.filter(source=source, commit=v2).order_by("id")
    assert [(c.cluster, c.namespace, c.step_index, c.weight, c.action) for c in logged] == [
        (DEFAULT, namespace, 0, 33, "update"),
        ("member-1", namespace, 2, 66, "update"),
    ]
    assert [c.cluster for c in selectors.change_log(source=source.name, cluster="member-1")] == [
        "member-1",
        "member-1",
    ]

    decisions.rollout_abort(first.pk, user=people["approver"])
    aborted = wait_for(source, phase="Aborted")
    assert aborted.rollback_pending_clusters == []
    after = {cluster: fleet.content(cluster, namespace) for cluster in clusters}
    assert after == before, "every cluster holds exactly what it had: data, labels, annotations, commit"
    rollbacks = Change.objects.filter(rollout=aborted, action="rollback")
    assert sorted(rollbacks.values_list("cluster", flat=True)) == [DEFAULT, "member-1"]


def test_a_flag_rollout_serves_the_new_result_to_the_same_users_in_every_cluster(
    repo, make_source, sync, fleet, tmp_path
):
    fleet.register("member-1")
    clusters = [DEFAULT, "member-1"]
    namespace = fleet.namespace(clusters)

    def flags(default: str) -> dict:
        variants = {"on": True, "off": False}
        return {
            "flags": {"new-checkout": {"state": "ENABLED", "variants": variants, "defaultVariant": default}}
        }

    def write(default: str, steps=None) -> None:
        document: dict = {"targets": targets(namespace, clusters), "flags": {"namespace": namespace}}
        if steps:
            document["rollout"] = {"steps": steps}
        repo.write_all({"sluice.yaml": document, "flags/checkout.json": json.dumps(flags(default))})
        repo.commit(f"checkout {default}")

    write("off")
    source = make_source(allowed_namespaces=SCOPE)
    first = sync(source)
    assert first["outcome"] == "applied", first["errors"]
    write("on", [{"setWeight": 25}, {"pause": {}}])
    sync(source)
    wait_for(source, phase="Paused", waiting_for="approval")

    keys = KEYS[:2000]
    # Each real evaluator on its own: they bucket differently, but each must agree across clusters.
    for name, evaluator_class in EVALUATORS.items():
        served: dict[str, set[str]] = {}
        for cluster in clusters:
            published = fleet.cluster_for(CONTEXT_OF[cluster]).get_configmap(namespace, "checkout")
            evaluator = evaluator_class(published["data"]["checkout.flagd.json"], tmp_path)
            try:
                served[cluster] = {
                    key for key, on in evaluator.values("new-checkout", False, keys).items() if on
                }
            finally:
                evaluator.close()
        assert served[DEFAULT] == served["member-1"], (
            f"{name}: the same users get the new result in both clusters"
        )
        assert 0.2 * len(keys) < len(served[DEFAULT]) < 0.3 * len(keys), name


def test_an_unreachable_cluster_pauses_its_wave_and_holds_up_nothing_else(
    repo, make_source, sync, fleet, people, tmp_path
):
    fleet.register("member-1")
    flaky = fleet.flaky("flaky", context="member-2")
    clusters = [DEFAULT, "flaky", "member-1"]
    namespace = fleet.namespace((DEFAULT, "member-1", "member-2"))
    commit(repo, namespace, clusters, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    assert fleet.versions(clusters, namespace) == ["1", "1", "1"]

    flaky.silence()  # its server stops answering: a closed loopback port
    steps = [{"setWeight": 33}, {"pause": {}}, {"setWeight": 66}, {"pause": {}}, {"setWeight": 100}]
    commit(repo, namespace, clusters, "2", steps)
    sync(source)
    first = wait_for(source, phase="Paused", waiting_for="approval", step_index=1)
    assert fleet.versions([DEFAULT, "member-1"], namespace) == ["2", "1"], "its first wave needs no flaky"

    decisions.rollout_promote(first.pk, user=people["approver"])
    waiting = wait_for(source, phase="Paused", waiting_for="cluster")
    assert waiting.step_index == 2, "the wave is not skipped"
    assert "waiting for cluster flaky" in waiting.message
    assert "unreachable" in waiting.message
    assert fleet.versions(clusters, namespace) == ["2", "1", "1"], "the other clusters are unaffected"
    result = sync(source)
    assert (result["outcome"], result["rollout"]["waiting_for"]) == ("paused", "cluster")

    # Another source on the healthy clusters syncs as usual meanwhile.
    other_repo = GitRepo(tmp_path / "other")
    other_namespace = fleet.namespace((DEFAULT, "member-1"))
    for version in ("1", "2", "3"):
        commit(other_repo, other_namespace, [DEFAULT, "member-1"], version)
        if version == "1":
            other = make_source(url=other_repo.url, allowed_namespaces=SCOPE)
        started = time.monotonic()
        assert sync(other, timeout=60)["outcome"] in ("applied", "completed")
        assert time.monotonic() - started < 30, "a cluster that does not answer holds up no other source"
        assert fleet.versions([DEFAULT, "member-1"], other_namespace) == [version, version]

    flaky.answer()  # back: the rollout tries again by itself and takes the wave
    resumed = wait_for(source, phase="Paused", waiting_for="approval", step_index=3, timeout=120)
    assert resumed.weight == 66
    assert fleet.versions(clusters, namespace) == ["2", "2", "1"]
    assert Change.objects.filter(rollout=resumed, cluster="flaky", step_index=2).count() == 1


def test_a_wave_whose_pass_failed_for_good_is_taken_up_again_at_the_sources_next_try_without_beat(
    repo, make_source, sync, fleet, people
):
    """The only cluster a wave needs stops answering as it is promoted: the pass, and its retries, fail,
    and the source backs off. Beat's poll takes such a source up again; the failed pass now wakes it at
    its next try too, as a pause and a cluster wait do. No beat runs here: before, the rollout stayed
    mid-wave for good (a suspect of a consumers test that once waited 180 s for its rollout)."""
    flaky = fleet.flaky("flaky", context="member-1")
    namespaces = [fleet.namespace(("member-1",)) for _ in range(2)]
    document: dict = {"targets": [{"cluster": "flaky", "namespaces": namespaces}]}
    repo.write_all({"sluice.yaml": document, "configmaps/app.yaml": configmap("app", {"VERSION": "1"})})
    repo.commit("v1")
    source = make_source(allowed_namespaces=SCOPE, poll_interval=timedelta(seconds=5))
    assert sync(source)["outcome"] == "applied"
    document["rollout"] = {"steps": [{"setWeight": 50}, {"pause": {}}]}
    repo.write_all({"sluice.yaml": document, "configmaps/app.yaml": configmap("app", {"VERSION": "2"})})
    repo.commit("v2")
    sync(source)
    rollout = wait_for(source, phase="Paused", waiting_for="approval")

    flaky.silence()
    decisions.rollout_promote(rollout.pk, user=people["approver"])
    poll(
        lambda: Source.objects.get(pk=source.pk).consecutive_failures >= 1,
        timeout=60,
        what="the promoted pass to fail, retries and all, and the source to back off",
    )
    assert Rollout.objects.get(pk=rollout.pk).phase not in ("Completed", "Failed", "Aborted")
    flaky.answer()

    wait_for(source, phase="Completed", timeout=60, of=rollout)
    assert [fleet.versions(["flaky"], namespace)[0] for namespace in namespaces] == ["2", "2"]


def test_a_failed_passs_wake_does_nothing_once_another_pass_ran_and_leaves_no_request_beside_one(
    repo, make_namespaces, make_source, sync
):
    """The wake comes a little after the source's next try, when beat's poll has taken it up (where beat
    runs): it then finds the count of failures moved and does nothing. One that found a pass holding the
    source left a request, and the pass's failure took it for a push and cut the back-off short."""
    from gitops.locks import source_lock
    from gitops.tasks import sync_source

    targets = make_namespaces("w")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source()
    sync(source)
    # Two failures in a row, and their next try due: what the wake of the second finds when nothing ran.
    Source.objects.filter(pk=source.pk).update(consecutive_failures=2, next_poll_at=timezone.now())

    def wake(failures: int) -> str:  # one whose count no longer holds: it does nothing
        kwargs = {"automatic": True, "rollouts_only": True, "wait_if_busy": False, "after_failures": failures}
        return sync_source.delay(source.pk, **kwargs).get(timeout=60)["outcome"]

    before = Source.objects.values_list("last_synced_at", flat=True).get(pk=source.pk)
    assert wake(1) == "coalesced", "a pass ran since the failure that sent it"
    assert Source.objects.values_list("last_synced_at", flat=True).get(pk=source.pk) == before
    kwargs = {"automatic": True, "rollouts_only": True, "wait_if_busy": False, "after_failures": 2}
    with source_lock(source) as held:  # as a preview or a person's decision holds it
        assert held
        waiting = sync_source.delay(source.pk, **kwargs)
        poll(lambda: waiting.state == "RETRY", timeout=60, what="the wake to find the source held")
        assert Source.objects.values_list("sync_requested_at", flat=True).get(pk=source.pk) is None, (
            "no request left: the holder takes none up"
        )
    # Asked again once the source is free, nothing having run since: the wake runs the pass.
    assert waiting.get(timeout=60)["outcome"] != "coalesced"
    assert Source.objects.values_list("last_synced_at", flat=True).get(pk=source.pk) != before


def test_a_cluster_late_past_the_deadline_leaves_no_thread_in_the_next_passs_way(fleet, settings, tmp_path):
    """Reads still blocked when a pass gives up on their cluster keep their threads until their own
    timeout: the cluster's read pool is let go, so the next pass's reads never queue behind them."""
    settings.SLUICE_CLUSTER_LIST_DEADLINE = 0.5
    hanging = fleet.flaky("hanging", context="member-1")
    # Not checked at the client's build (which a hung server also holds up, for its own few seconds):
    # this is about the reads' threads.
    ClusterRecord.objects.filter(name="hanging").update(identity="")
    clients.refresh()
    server = HungServer()
    try:
        hanging.hang(server)
        before = pools.pool("hanging", "read", 8)
        started = time.monotonic()
        state = live_configmaps([("hanging", "default"), (DEFAULT, "default")])
        assert time.monotonic() - started < 10, "the pass does not wait for its late reads"
        assert "did not answer its reads within" in str(state.unreachable["hanging"])
        assert (DEFAULT, "default") in state.objects, "the cluster that answers is read as usual"
        assert pools.pool("hanging", "read", 8) is not before
    finally:
        server.close()


def test_an_abort_owes_an_unreachable_cluster_its_rollback_until_it_answers(
    repo, make_source, sync, fleet, people, client: Client
):
    fleet.register("member-1")
    flaky = fleet.flaky("flaky", context="member-2")
    clusters = [DEFAULT, "flaky", "member-1"]
    namespace = fleet.namespace((DEFAULT, "member-1", "member-2"))
    commit(repo, namespace, clusters, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    before = {cluster: fleet.content(cluster, namespace) for cluster in clusters}

    commit(repo, namespace, clusters, "2", [{"setWeight": 66}, {"pause": {}}])
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    assert fleet.versions(clusters, namespace) == ["2", "2", "1"]

    flaky.silence()
    decisions.rollout_abort(paused.pk, user=people["approver"])
    aborted = wait_for(source, phase="Aborted")
    assert aborted.rollback_pending_clusters == ["flaky"]
    assert "rollback owed on flaky" in aborted.message
    assert fleet.content(DEFAULT, namespace) == before[DEFAULT]
    assert fleet.content("member-1", namespace) == before["member-1"]
    flaky_now = fleet.content("flaky", namespace)
    assert (flaky_now or {}).get("data") == {"VERSION": "2"}, "still the rollout's content: it is owed"

    status = io.StringIO()
    call_command("gitops", "status", source.name, stdout=status)
    assert f"rollout {aborted.pk} still owes a rollback on: flaky" in status.getvalue()
    client.force_login(people["viewer"])
    shown = client.get(f"/api/rollouts/{aborted.pk}").json()
    assert shown["rollback_pending_clusters"] == ["flaky"]

    flaky.answer()  # the retry restores it by itself, as soon as it answers
    restored = poll(
        lambda: (r := Rollout.objects.get(pk=aborted.pk)).rollback_pending_clusters == [] and r,
        timeout=120,
        what="the owed rollback of flaky",
    )
    assert restored.phase == "Aborted"
    assert fleet.content("flaky", namespace) == before["flaky"]
    assert RolloutEvent.objects.filter(rollout=aborted, message__startswith="rolled back on flaky").exists()
    assert Change.objects.filter(rollout=aborted, cluster="flaky", action="rollback").count() == 1


@dataclass
class CutShort:
    """v1 everywhere, then v2's step met flaky silent between its plan and its apply."""

    flaky: Any
    namespace: str
    source: Any
    waiting: Rollout  # paused for the cluster, flaky's intent pending
    written: str  # the resourceVersion flaky's object had before v2


def cut_short_at_flaky(repo, make_source, sync, fleet, monkeypatch, *, before_v2=None) -> CutShort:
    from gitops import reconcile, schedule
    from gitops.models import ApplyIntent
    from gitops.rollout import step

    flaky = fleet.flaky("flaky", context="member-2")
    clusters = [DEFAULT, "flaky"]
    namespace = fleet.namespace((DEFAULT, "member-2"))
    commit(repo, namespace, clusters, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    if before_v2 is not None:
        before_v2(namespace)
    written = fleet.cluster_for("member-2").get_configmap(namespace, "app")["metadata"]["resourceVersion"]
    applying = step.intents_execute

    def cluster_gone_before_the_apply(intents):
        if any(intent.cluster == "flaky" for intent in intents):
            flaky.silence()
        return applying(intents)

    monkeypatch.setattr(step, "intents_execute", cluster_gone_before_the_apply)
    # The pass's wake-up for the silent cluster is not sent: the stack's worker would otherwise run it
    # a few seconds later, racing what each test does next in this process.
    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")
    commit(repo, namespace, clusters, "2")
    reconcile.source_sync(source.pk)  # in this process, so that the apply meets the silence
    monkeypatch.undo()
    waiting = wait_for(source, phase="Paused", waiting_for="cluster")
    assert ApplyIntent.objects.filter(rollout=waiting, cluster="flaky", status="pending").exists()
    return CutShort(flaky, namespace, source, waiting, written)


def test_what_an_aborted_rollout_never_got_to_apply_is_not_applied_when_its_cluster_answers(
    repo, make_source, sync, fleet, people, monkeypatch
):
    """A cluster stops answering between a step's plan and its apply, so its intents stay pending,
    and the rollout is aborted. When the cluster answers, the owed rollback settles those intents
    from what the cluster holds: the aborted content is not applied there first, only to be taken
    back (the cluster's object is not written at all)."""
    from gitops.models import ApplyIntent

    cut = cut_short_at_flaky(repo, make_source, sync, fleet, monkeypatch)
    assert fleet.versions([DEFAULT], cut.namespace) == ["2"]

    decisions.rollout_abort(cut.waiting.pk, user=people["approver"])
    aborted = wait_for(cut.source, phase="Aborted")
    assert aborted.rollback_pending_clusters == ["flaky"]
    assert fleet.versions([DEFAULT], cut.namespace) == ["1"]

    cut.flaky.answer()
    poll(
        lambda: Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == [],
        timeout=120,
        what="the owed rollback of flaky",
    )
    live = fleet.cluster_for("member-2").get_configmap(cut.namespace, "app")
    assert live["data"] == {"VERSION": "1"}
    assert live["metadata"]["resourceVersion"] == cut.written, (
        "the aborted content was applied, then taken back"
    )
    assert not Change.objects.filter(rollout=aborted, cluster="flaky").exists()
    assert not ApplyIntent.objects.filter(rollout=aborted, status="pending").exists()
    assert ApplyIntent.objects.filter(rollout=aborted, cluster="flaky", status="dropped").exists()


def test_a_preview_shows_a_cluster_with_writes_left_pending_left_alone_as_the_next_pass_leaves_it(
    repo, make_source, sync, fleet, monkeypatch
):
    """`gitops diff` planned such a cluster as if nothing were pending: an update the next pass does not
    make (it finishes the pending write first, and plans from what that leaves)."""
    from gitops import preview

    cut = cut_short_at_flaky(repo, make_source, sync, fleet, monkeypatch)
    cut.flaky.answer()

    previewed = preview.source_preview(cut.source)

    (at_flaky,) = [item for item in previewed.plan.items if item.cluster == "flaky"]
    assert at_flaky.action == "unreachable", at_flaky
    assert "writes left pending in flaky are not finished" in at_flaky.reason


def test_a_rollback_asked_while_a_cluster_was_silent_does_not_first_apply_what_it_never_got(
    repo, make_source, sync, fleet, people, monkeypatch
):
    """The cluster answers again after the abort was asked and before it ran: the rollout's forward
    change still pending there is not put out first (only to be taken back); the rollback comes first."""
    from gitops import reconcile
    from gitops.models import ApplyIntent

    cut = cut_short_at_flaky(repo, make_source, sync, fleet, monkeypatch)

    # Asked as rollout_abort asks, without queueing its pass: the cluster answers before any pass runs.
    Rollout.objects.filter(pk=cut.waiting.pk).update(abort_requested_by="otto", abort_reason="bad canary")
    cut.flaky.answer()
    reconcile.source_sync(cut.source.pk)

    aborted = wait_for(cut.source, phase="Aborted")
    assert aborted.rollback_pending_clusters == []
    live = fleet.cluster_for("member-2").get_configmap(cut.namespace, "app")
    assert live["data"] == {"VERSION": "1"}
    assert live["metadata"]["resourceVersion"] == cut.written, (
        "the aborted content was applied, then taken back"
    )
    assert not Change.objects.filter(rollout=aborted, cluster="flaky").exists()
    assert ApplyIntent.objects.filter(rollout=aborted, cluster="flaky", status="dropped").exists()


def test_a_forward_change_a_cut_short_batch_applied_is_logged_before_the_rollback_takes_it_back(
    repo, make_source, sync, fleet, monkeypatch
):
    """A batch that took effect before its cluster stopped answering leaves its intents pending. When the
    rollout is rolled back, the change the cluster got is logged (not applied again), then its restore:
    the log holds every content the cluster held, whatever keys other managers keep beside Sluice's."""
    from gitops import reconcile
    from gitops.cluster.apply import intents_apply_everywhere
    from gitops.models import ApplyIntent

    def foreign_key(namespace: str) -> None:
        # A key another manager owns: server-side apply keeps it, so the object never equals the intent.
        extra = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "namespace": namespace}}
        fleet.cluster_for("member-2").apply_configmap(
            {**extra, "data": {"EXTRA": "theirs"}}, field_manager="someone"
        )

    cut = cut_short_at_flaky(repo, make_source, sync, fleet, monkeypatch, before_v2=foreign_key)
    (cut_short,) = ApplyIntent.objects.filter(rollout=cut.waiting, cluster="flaky", status="pending")
    cut.flaky.answer()
    intents_apply_everywhere([cut_short])  # it had taken effect: the answer was what got lost
    assert fleet.versions(["flaky"], cut.namespace) == ["2"]

    Rollout.objects.filter(pk=cut.waiting.pk).update(abort_requested_by="otto", abort_reason="bad canary")
    reconcile.source_sync(cut.source.pk)

    aborted = wait_for(cut.source, phase="Aborted")
    assert fleet.versions(["flaky"], cut.namespace) == ["1"]
    logged = list(Change.objects.filter(rollout=aborted, cluster="flaky").order_by("id"))
    assert [(change.action, change.after["data"]["VERSION"]) for change in logged] == [
        ("update", "2"),
        ("rollback", "1"),
    ]
    assert ApplyIntent.objects.get(pk=cut_short.pk).status == "done"


def test_an_administrator_waives_the_rollback_owed_to_a_cluster_gone_for_good(
    repo, make_source, sync, fleet, people, client: Client
):
    """A cluster that will not answer again keeps a rollback owed forever, and with it the source's
    deletion and the cluster's removal. An administrator, and only one, lets it off, with a reason
    that the rollout's timeline keeps; what the rollout wrote there stays."""
    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from gitops.models import Revision, Source
    from gitops.rollout.decisions import RolloutError, rollout_rollback_waive

    fleet.register("member-1")
    owed = aborted_owing_flaky(repo, make_source, sync, fleet, people, [DEFAULT, "flaky", "member-1"], 66)
    source, namespace, aborted, flaky = owed.source, owed.namespace, owed.aborted, owed.flaky

    admin = User.objects.create_user("ines", email="ines@example.com", password="x")
    admin.groups.add(Group.objects.get(name="admin"))
    admin = User.objects.get(pk=admin.pk)
    page = f"/rollouts/{aborted.pk}/"
    client.force_login(people["approver"])
    assert b"Waive the rollback on flaky" not in client.get(page).content
    refused = client.post(f"/rollouts/{aborted.pk}/waive-rollback", {"cluster": "flaky", "comment": "gone"})
    assert refused.status_code == 403
    with pytest.raises(CommandError, match="otto may not waive a rollback: administrators only"):
        call_command(
            "gitops",
            "waive-rollback",
            str(aborted.pk),
            "--cluster",
            "flaky",
            "--user",
            "otto",
            "--reason",
            "x",
        )
    with pytest.raises(RolloutError, match="say why"):
        rollout_rollback_waive(aborted.pk, cluster="flaky", user=admin, reason="  ")
    with pytest.raises(RolloutError, match="owes 'member-1' no rollback"):
        rollout_rollback_waive(aborted.pk, cluster="member-1", user=admin, reason="tidy")
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == ["flaky"]

    client.force_login(admin)
    assert b"Waive the rollback on flaky" in client.get(page).content
    # A push lands while the waiver holds the source's lock: it finds the source busy and leaves only
    # its request, which the waiver queues once done (a worker's pass would run it itself).
    pushed = repo.commit("nothing to change")
    Source.objects.filter(pk=source.pk).update(sync_requested_at=timezone.now())
    waived = client.post(
        f"/rollouts/{aborted.pk}/waive-rollback", {"cluster": "flaky", "comment": "the region burned down"}
    )
    assert waived.status_code == 302
    after = Rollout.objects.get(pk=aborted.pk)
    assert (after.rollback_pending_clusters, after.pause_until) == ([], None)
    event = RolloutEvent.objects.filter(rollout=aborted, kind="rollback-waived").get()
    assert event.actor == "ines"
    assert event.message == "rollback on flaky waived by ines: the region burned down"
    assert b"Waive the rollback on" not in client.get(page).content
    poll(
        lambda: Revision.objects.filter(source=source, commit=pushed).exists(),
        timeout=60,
        what="the push that came during the waiver to be synced",
    )

    # The cluster answers again later: nothing takes back what the rollout wrote there any more.
    flaky.answer()
    sync(source)
    assert fleet.versions(["flaky"], namespace) == ["2"]
    assert not Change.objects.filter(rollout=aborted, cluster="flaky", action="rollback").exists()


def test_a_cluster_gone_for_good_is_forgotten_with_what_sluice_kept_about_it(
    repo, make_source, sync, fleet, people
):
    """A cluster that will never answer again holds objects Sluice applied (nobody can prune them) and
    a rollback owed to it, and a change of policy that drops it waits for it at 100%. `remove-cluster
    --forget` lets all of it go, without asking the cluster, once no policy targets it."""
    from gitops.models import ClusterAudit, ManagedObject, SourceAudit

    fleet.register("member-1")
    owed = aborted_owing_flaky(repo, make_source, sync, fleet, people, [DEFAULT, "flaky", "member-1"], 66)
    source, namespace, aborted = owed.source, owed.namespace, owed.aborted  # flaky stays silent for good

    def remove(*options: str) -> str:
        out = io.StringIO()
        call_command("gitops", "remove-cluster", "flaky", *options, stdout=out)
        return out.getvalue()

    with pytest.raises(CommandError, match="targeted by"):
        remove("--forget", "--reason", "decommissioned")
    commit(repo, namespace, [DEFAULT, "member-1"], "3")  # the policy drops it
    sync(source)
    waiting = wait_for(source, phase="Paused", waiting_for="cluster")
    assert "flaky" in waiting.message, "its objects there are to be pruned at 100%"
    with pytest.raises(CommandError, match="still holds objects Sluice applied"):
        remove()
    with pytest.raises(CommandError, match="say why"):
        remove("--forget")

    printed = remove("--forget", "--reason", "region decommissioned", "--by", "ines")

    assert f"objects no longer managed there: {source.name} (1)" in printed
    assert f"rollbacks waived: {aborted.pk}" in printed
    assert not ClusterRecord.objects.filter(name="flaky").exists()
    assert not ManagedObject.objects.filter(cluster="flaky").exists()
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == []
    waived = RolloutEvent.objects.get(rollout=aborted, kind="rollback-waived")
    assert waived.actor == "ines" and "cluster flaky forgotten: region decommissioned" in waived.message
    audit = SourceAudit.objects.get(source=source, action="forget-cluster")
    assert (audit.actor, audit.via) == ("ines", "cli")
    assert "Sluice no longer manages the 1 object(s) it applied there" in audit.message
    forgot = ClusterAudit.objects.get(cluster="flaky", action="forget")
    assert (forgot.actor, forgot.via, forgot.after) == ("ines", "cli", None)
    assert forgot.before["kubeconfig"].endswith("flaky.kubeconfig")
    assert f"region decommissioned; objects no longer managed there: {source.name} (1)" in forgot.message
    # The rollout that waited for it goes on: nothing of the source is left there to prune.
    sync(source)
    wait_for(source, phase="Completed")
    assert fleet.versions([DEFAULT, "member-1"], namespace) == ["3", "3"]


def test_a_newer_rollout_leaves_a_cluster_owed_a_rollback_alone_until_the_rollback_is_done(
    repo, make_source, sync, fleet, people
):
    """The cluster answers again before the aborted rollout's rollback is retried, and a newer rollout
    (here one whose revision wants what the cluster holds: nothing to write, so no history of it) waits
    for that cluster as for an unreachable one. Otherwise the owed rollback, coming due later, would take
    back what the newer rollout found already right. Once the rollback is done, the newer rollout goes on
    there, and its own history holds the cluster."""
    owed = aborted_owing_flaky(repo, make_source, sync, fleet, people, ["flaky", DEFAULT], 50)
    source, namespace, clusters, aborted = owed.source, owed.namespace, owed.clusters, owed.aborted
    assert fleet.versions(clusters, namespace) == ["2", "1"], "flaky kept what it owes the rollback of"
    owed.answering_before_its_retry()
    commit(repo, namespace, clusters, "2", [{"setWeight": 100}])  # what flaky holds, as a new commit
    sync(source)
    newer = wait_for(source, phase="Paused", waiting_for="cluster")
    assert newer.pk != aborted.pk
    assert f"flaky (rollout {aborted.pk} still owes it a rollback, which comes first)" in newer.message
    assert fleet.versions(clusters, namespace) == ["2", "2"], "the default cluster is not held up"
    assert not Change.objects.filter(rollout=newer, cluster="flaky").exists(), "flaky is left alone"

    Rollout.objects.filter(pk=aborted.pk).update(pause_until=None)  # the owed rollback comes due
    sync(source)
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == []
    done = wait_for(source, phase="Completed")  # at the newer rollout's own retry, a few seconds on
    assert done.pk == newer.pk
    assert fleet.versions(clusters, namespace) == ["2", "2"]
    assert Change.objects.filter(rollout=aborted, cluster="flaky", action="rollback").count() == 1
    assert Change.objects.filter(rollout=newer, cluster="flaky", action="update").count() == 1


def test_a_cluster_left_alone_for_its_owed_rollback_does_not_fail_the_pass_when_the_others_are_down(
    repo, make_source, sync, fleet, people
):
    """A later rollout leaves flaky alone (a rollback is owed there) while its other cluster is down:
    flaky may well answer, so the pass does not fail as if no cluster answered (and back off): the step
    waits for both clusters, each for its own reason, and is tried again as any waiting step is."""
    down = fleet.flaky("member-9", context="member-1")
    owed = aborted_owing_flaky(repo, make_source, sync, fleet, people, ["flaky", "member-9"], 100)
    source, namespace, clusters, aborted = owed.source, owed.namespace, owed.clusters, owed.aborted
    owed.answering_before_its_retry()
    down.silence()
    commit(repo, namespace, clusters, "3", [{"setWeight": 100}])
    with contextlib.suppress(Exception):  # a failed pass shows in the rollout, asserted below
        sync(source, timeout=30)
    newer = wait_for(source, phase="Paused", waiting_for="cluster", timeout=30)
    assert newer.pk != aborted.pk
    assert "waiting for cluster flaky, member-9 (setWeight 100)" in newer.message
    assert f"flaky (rollout {aborted.pk} still owes it a rollback, which comes first)" in newer.message
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == ["flaky"]


def test_a_rollback_owed_to_an_object_a_newer_rollout_left_behind_is_still_carried_out(
    repo, make_source, sync, fleet, people
):
    """A newer rollout vouches only for what it planned: an object its revision no longer has (kept, not
    pruned) still holds the aborted content, and the owed rollback restores it once it is due, before the
    newer rollout writes to that cluster."""
    from gitops.rollout.rollback import rollbacks_owed_finish

    owed = aborted_owing_flaky(repo, make_source, sync, fleet, people, ["flaky", DEFAULT], 50)
    source, namespace, clusters, aborted = owed.source, owed.namespace, owed.clusters, owed.aborted
    owed.answering_before_its_retry()
    repo.write_all(
        {"sluice.yaml": {"targets": targets(namespace, clusters)}, "configmaps/db.yaml": configmap("db", {})}
    )
    repo.remove("configmaps/app.yaml")  # app is no longer in Git, and without prune it is kept
    repo.commit("v3")
    sync(source)
    wait_for(source, phase="Paused", waiting_for="cluster")  # flaky waits for its owed rollback
    assert fleet.versions(clusters, namespace) == ["2", "1"]

    Rollout.objects.filter(pk=aborted.pk).update(pause_until=None)
    rollbacks_owed_finish(source)

    assert fleet.versions(clusters, namespace) == ["1", "1"], "the aborted content stayed behind"
    assert Rollout.objects.get(pk=aborted.pk).rollback_pending_clusters == []
    sync(source)
    wait_for(source, phase="Completed")
    assert fleet.versions(clusters, namespace) == ["1", "1"], "kept, not pruned, with what it held before"
    assert fleet.content("flaky", namespace, "db") is not None


def test_a_cluster_removed_by_another_process_loses_its_client_here_at_the_next_refresh(stack):
    """A worker or the live cache that did not run the removal itself kept the removed cluster's client,
    its connections and its threads; the registry read that every pass starts with lets them go."""
    from gitops.cluster.clients import ClusterClients, UnknownClusterError
    from gitops.models import Cluster as ClusterRecord

    cluster_admin.cluster_add(name="going", kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN)
    registry = ClusterClients()
    registry.refresh()
    held = registry.get("going")
    assert registry.get("going") is held

    ClusterRecord.objects.filter(name="going").delete()  # removed elsewhere: no forget() in this process
    registry.refresh()

    assert "going" not in registry._clients
    with pytest.raises(UnknownClusterError):
        registry.get("going")


def test_a_kubeconfig_mounted_from_a_secret_is_registered_by_its_mounted_path(stack, tmp_path):
    """A Secret volume is a link into a dated directory that the kubelet replaces at each update (and
    names apart in every pod). Registered resolved, the stored path was that directory's: gone after the
    first update (a rotated token), missing in every other pod."""
    import os
    import shutil

    from gitops.cluster.clients import ClusterClients
    from gitops.models import Cluster as ClusterRecord

    mount = tmp_path / "member-secret"
    mount.mkdir()

    def kubelet_writes(version: str) -> None:  # as the kubelet's AtomicWriter lays a volume out
        dated = mount / f"..2026_12_06_{version}"
        dated.mkdir()
        shutil.copy(stack["KUBECONFIG"], dated / "member.kubeconfig")
        (mount / "..data_tmp").symlink_to(dated.name)
        os.replace(mount / "..data_tmp", mount / "..data")

    kubelet_writes("04_00_00.1")
    (mount / "member.kubeconfig").symlink_to("..data/member.kubeconfig")
    cluster_admin.cluster_add(
        name="mounted", kubeconfig=str(mount / "member.kubeconfig"), context="member-1", actor=ADMIN
    )
    assert ClusterRecord.objects.get(name="mounted").kubeconfig == str(mount / "member.kubeconfig")

    kubelet_writes("05_00_00.2")  # the Secret updated: the first dated directory goes
    shutil.rmtree(mount / "..2026_12_06_04_00_00.1")
    registry = ClusterClients()
    registry.refresh()
    assert registry.get("mounted").server_version(timeout=10)


def test_a_kubeconfig_that_skips_the_servers_certificate_check_is_refused_unless_allowed(stack, tmp_path):
    """insecure-skip-tls-verify (or a plain http server) was accepted silently: Sluice's credentials for
    the cluster would go to whoever answers at that address."""
    import yaml

    from gitops.errors import PermanentError
    from gitops.models import Cluster as ClusterRecord
    from gitops.models import ClusterAudit

    config = yaml.safe_load(Path(stack["KUBECONFIG"]).read_text())
    for entry in config["clusters"]:
        entry["cluster"].pop("certificate-authority-data", None)
        entry["cluster"].pop("certificate-authority", None)
        entry["cluster"]["insecure-skip-tls-verify"] = True
    unverified = tmp_path / "unverified.kubeconfig"
    unverified.write_text(yaml.safe_dump(config))
    with pytest.raises(PermanentError, match="without checking its certificate"):
        cluster_admin.cluster_add(
            name="unverified", kubeconfig=str(unverified), context="member-1", actor=ADMIN
        )
    assert not ClusterRecord.objects.filter(name="unverified").exists()

    cluster_admin.cluster_add(
        name="unverified",
        kubeconfig=str(unverified),
        context="member-1",
        allow_unverified_tls=True,
        actor=ADMIN,
    )
    assert ClusterRecord.objects.get(name="unverified").allow_unverified_tls, "kept, for every rebuild"
    added = ClusterAudit.objects.get(cluster="unverified")
    assert added.after["allow_unverified_tls"] and "not checked (allowed)" in added.message


def test_a_kubeconfig_whose_exec_plugin_fails_is_refused_rather_than_used_without_credentials(
    stack, tmp_path
):
    """The client only logs a failed exec plugin and loads with no credentials: the cluster was registered
    and every request went out anonymous."""
    import yaml

    from gitops.errors import PermanentError

    config = yaml.safe_load(Path(stack["KUBECONFIG"]).read_text())
    for entry in config["users"]:
        entry["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "false"}}
    plugged = tmp_path / "exec.kubeconfig"
    plugged.write_text(yaml.safe_dump(config))
    with pytest.raises(PermanentError, match="loads no credentials"):
        cluster_admin.cluster_add(name="plugged", kubeconfig=str(plugged), context="member-1", actor=ADMIN)


def test_the_clusters_page_shows_a_servers_credentials_redacted(fleet, tmp_path, people, client: Client):
    """A kubeconfig's server URL may carry credentials (userinfo): every viewer reads the page."""
    kubeconfig = FlakyKubeconfig(tmp_path / "userinfo.kubeconfig", fleet.stack["KUBECONFIG"], "member-1")
    kubeconfig.point_at(kubeconfig.real_server.replace("https://", "https://deploy:hunter2@", 1))
    cluster_admin.cluster_add(name="userinfo", kubeconfig=str(kubeconfig.path), actor=ADMIN)
    client.force_login(people["viewer"])
    page = client.get("/clusters/").content
    assert b'data-cluster="userinfo"' in page
    assert b"hunter2" not in page
    assert b"https://deploy:***@" in page
    listed = io.StringIO()
    call_command("gitops", "clusters", "--json", stdout=listed)  # what CI logs keep
    assert "hunter2" not in listed.getvalue() and "https://deploy:***@" in listed.getvalue()


def test_a_sources_credentials_may_not_be_a_file_a_clusters_kubeconfig_names(tmp_path, make_source):
    """A kubeconfig with a tokenFile (the README's way to rotate a token): an administrator who may manage
    sources, not clusters, pointed a source's credentials at that file and its URL at their own host,
    and the next fetch sent the cluster's bearer token there. Refused now, as the kubeconfig itself is;
    a token beside it that no kubeconfig names is still a Git credential."""
    import yaml

    from gitops import source_admin
    from gitops.fetch.credentials import configured_scope, reference_problem
    from gitops.models import Cluster

    (tmp_path / "token").write_text("a-cluster-bearer-token\n")
    (tmp_path / "git-token").write_text("a-git-token\n")
    kubeconfig = tmp_path / "kubeconfig"
    user = {"name": "sluice", "user": {"tokenFile": "token"}}
    cluster = {"name": "prod-eu", "cluster": {"server": "https://127.0.0.1:1"}}
    context = {"name": "prod-eu", "context": {"cluster": "prod-eu", "user": "sluice"}}
    kubeconfig.write_text(
        yaml.safe_dump(
            {"users": [user], "clusters": [cluster], "contexts": [context], "current-context": "prod-eu"}
        )
    )
    Cluster.objects.create(name="prod-eu", kubeconfig=str(kubeconfig))

    for named in (tmp_path / "token", kubeconfig):
        assert "holds a cluster's credentials" in (
            reference_problem(f"file:{named}", configured_scope()) or ""
        )
    assert reference_problem(f"file:{tmp_path / 'git-token'}", configured_scope()) is None
    source = make_source()
    with pytest.raises(source_admin.SourceSettingsError, match="holds a cluster's credentials"):
        source_admin.source_update(source, credentials_ref=f"file:{tmp_path / 'token'}")


# -- the clusters' audit trail, and what add-cluster allowed kept for every rebuild ---------------------


def test_adding_and_removing_a_cluster_each_leave_an_audit_row(stack, cluster_for):
    """add-cluster and remove-cluster changed the registry without a trace: who registered a cluster with
    which kubeconfig, and who removed it, was nowhere (only --forget left rows, in the sources' trails).
    Each leaves a row now, with the registered settings: references, never a credential."""
    import os

    from gitops.errors import PermanentError
    from gitops.models import Cluster as ClusterRecord
    from gitops.models import ClusterAudit

    kubeconfig = stack["KUBECONFIG"]
    call_command(
        "gitops",
        "add-cluster",
        "audited",
        "--kubeconfig",
        kubeconfig,
        "--context",
        "member-1",
        "--by",
        "ines",
        stdout=io.StringIO(),
    )
    registered = ClusterRecord.objects.get(name="audited").registered_settings()
    assert registered == {
        "kubeconfig": os.path.abspath(kubeconfig),
        "context": "member-1",
        "in_cluster": False,
        "allow_unverified_tls": False,
        "identity": cluster_for("member-1").identity(),  # the cluster it was registered for
    }
    with pytest.raises(PermanentError, match="already registered"):
        cluster_admin.cluster_add(name="audited", kubeconfig=kubeconfig, context="member-2", actor=ADMIN)
    with pytest.raises(PermanentError, match="no cluster named"):
        cluster_admin.cluster_remove("nonesuch", actor=ADMIN)

    call_command("gitops", "remove-cluster", "audited", "--by", "noor", stdout=io.StringIO())

    rows = list(ClusterAudit.objects.order_by("id"))
    assert [(r.cluster, r.action, r.actor, r.via) for r in rows] == [
        ("audited", "add", "ines", "cli"),
        ("audited", "remove", "noor", "cli"),
    ], "one row each; the refusals left none"
    added, removed = rows
    assert (added.before, added.after) == (None, registered)
    assert (removed.before, removed.after) == (registered, None)


def test_an_audit_row_is_written_with_the_registry_change_or_neither_is(stack, monkeypatch):
    from gitops.models import Cluster as ClusterRecord
    from gitops.models import ClusterAudit

    def refused(**fields):
        raise RuntimeError("the audit row could not be written")

    cluster_admin.cluster_add(name="kept", kubeconfig=stack["KUBECONFIG"], context="member-1", actor=ADMIN)
    monkeypatch.setattr(ClusterAudit.objects, "create", refused)
    with pytest.raises(RuntimeError):
        cluster_admin.cluster_add(name="unaudited", kubeconfig=stack["KUBECONFIG"], actor=ADMIN)
    with pytest.raises(RuntimeError):
        cluster_admin.cluster_remove("kept", actor=ADMIN)
    with pytest.raises(RuntimeError):
        cluster_admin.cluster_forget("kept", actor=ADMIN, reason="gone")

    assert list(ClusterRecord.objects.values_list("name", flat=True)) == ["kept"]


def test_forgetting_a_cluster_leaves_an_audit_row_with_its_reason_and_the_trail_is_append_only(stack):
    from django.db import connection, transaction

    from gitops.models import ClusterAudit

    cluster_admin.cluster_add(name="burned", kubeconfig=stack["KUBECONFIG"], context="member-2", actor=ADMIN)
    cluster_admin.cluster_forget("burned", actor=Actor.command_line("ines"), reason="the datacenter burned")

    forgot = ClusterAudit.objects.get(cluster="burned", action="forget")
    assert (forgot.actor, forgot.via, forgot.after) == ("ines", "cli", None)
    assert forgot.before["context"] == "member-2"
    assert forgot.message == (
        "the datacenter burned; objects no longer managed there: none; rollbacks waived: none; "
        "pending changes dropped: 0"
    )
    with pytest.raises(TypeError, match="append-only"):
        forgot.delete()
    with pytest.raises(TypeError, match="append-only"):
        ClusterAudit.objects.filter(pk=forgot.pk).update(actor="someone else")
    forgot.actor = "someone else"
    with pytest.raises(TypeError, match="append-only"):
        forgot.save()
    for statement in (
        "UPDATE gitops_clusteraudit SET actor = 'x' WHERE id = %s",
        "DELETE FROM gitops_clusteraudit WHERE id = %s",
    ):
        with (
            transaction.atomic(),
            pytest.raises(Exception, match="append-only"),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [forgot.pk])
    assert ClusterAudit.objects.get(pk=forgot.pk).actor == "ines"


def test_a_registered_kubeconfig_rewritten_to_skip_the_certificate_check_is_refused_by_the_workers(
    stack, tmp_path
):
    """add-cluster refused an unverified kubeconfig, but a worker rebuilt its client from the file as it
    was rewritten later (its fingerprint changed) without checking again: the cluster's credentials went
    to whoever answered at its server's address. Refused at the rebuild now, unless add-cluster was told
    --allow-unverified-tls, which the row keeps."""
    import re

    from gitops.cluster.clients import ClusterClients, UnverifiedClusterError

    def unverify(kubeconfig: FlakyKubeconfig) -> None:  # rewritten in place, its CA gone
        kubeconfig.cluster.pop("certificate-authority-data", None)
        kubeconfig.cluster.pop("certificate-authority", None)
        kubeconfig.cluster["insecure-skip-tls-verify"] = True
        kubeconfig.answer()

    checked = FlakyKubeconfig(tmp_path / "checked.kubeconfig", stack["KUBECONFIG"], "member-1")
    allowed = FlakyKubeconfig(tmp_path / "allowed.kubeconfig", stack["KUBECONFIG"], "member-2")
    cluster_admin.cluster_add(name="checked", kubeconfig=str(checked.path), actor=ADMIN)
    cluster_admin.cluster_add(
        name="allowed", kubeconfig=str(allowed.path), allow_unverified_tls=True, actor=ADMIN
    )
    registry = ClusterClients()
    registry.refresh()
    try:
        assert registry.get("checked").server_version(timeout=10)
        assert registry.get("allowed").server_version(timeout=10)

        unverify(checked)
        unverify(allowed)

        with pytest.raises(
            UnverifiedClusterError, match=re.escape(f"cluster checked: its kubeconfig {checked.path}")
        ):
            registry.get("checked")
        assert "checked" not in registry._clients
        assert registry.get("allowed").server_version(timeout=10), "allowed when it was registered"
        cluster_admin.probes_forget("checked")
        status = next(s for s in cluster_admin.clusters_status() if s.name == "checked")
        assert not status.reachable and "its registration does not allow" in status.error
    finally:
        registry.forget()


def test_a_revisions_diff_keeps_to_the_cluster_asked_for(repo, make_source, sync, fleet):
    """`gitops diff NAME --revision REF --cluster C` printed every cluster's part of the plan: --cluster
    went with the tip's diff only."""
    fleet.register("member-1")
    clusters = [DEFAULT, "member-1"]
    namespace = fleet.namespace((DEFAULT, "member-1"))
    commit(repo, namespace, clusters, "1")
    source = make_source(allowed_namespaces=SCOPE)
    assert sync(source)["outcome"] == "applied"
    v2 = commit(repo, namespace, clusters, "2")

    whole, one = io.StringIO(), io.StringIO()
    call_command("gitops", "diff", source.name, "--revision", v2, "--json", stdout=whole)
    call_command(
        "gitops", "diff", source.name, "--revision", v2, "--cluster", "member-1", "--json", stdout=one
    )

    assert sorted(item["cluster"] for item in json.loads(whole.getvalue())["items"]) == clusters
    assert [item["cluster"] for item in json.loads(one.getvalue())["items"]] == ["member-1"]
