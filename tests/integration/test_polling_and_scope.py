"""Polling through beat, the compare-and-swap claim, and what a source may touch and read."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from gitops import polling, reconcile
from gitops.cluster import Cluster
from gitops.errors import TemporaryError
from gitops.models import Change, Source
from tests.broker import Sent, keep_sends, refuse_sends
from tests.gitrepo import configmap, policy
from tests.rollouts import deny_window_letting_people_sync
from tests.workers import poll, running_beat

pytestmark = pytest.mark.django_db(transaction=True)


def test_beat_polls_a_source_and_a_new_commit_arrives_without_a_manual_sync(
    repo, make_namespaces, make_source, celery_worker, worker_env, cluster, tmp_path
):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    make_source(poll_interval=timedelta(seconds=5))
    with running_beat(worker_env, tmp_path / "schedule", name="beat-polling"):
        poll(lambda: cluster.get_configmap(namespace, "app"), timeout=60, interval=0.2, what="the first poll")
        repo.write("configmaps/app.yaml", configmap("app", {"v": "2"}))
        repo.commit()
        poll(
            lambda: (cluster.get_configmap(namespace, "app") or {}).get("data") == {"v": "2"},
            timeout=60,
            interval=0.2,
            what="the next poll to apply the new commit",
        )


def test_a_due_source_is_claimed_once_even_when_two_sweeps_race(make_source):
    source = make_source(poll_interval=timedelta(seconds=60))
    Source.objects.filter(pk=source.pk).update(next_poll_at=timezone.now() - timedelta(seconds=1))

    first = polling.sources_claim_due()
    second = polling.sources_claim_due()

    assert first == [source.pk]
    assert second == []
    assert Source.objects.get(pk=source.pk).next_poll_at > timezone.now() + timedelta(seconds=50)


def test_a_refused_poll_gives_back_only_the_time_its_claim_wrote(make_source):
    """A pass that moved the poll meanwhile (its next interval, a back-off) keeps its time."""
    given_back, moved = make_source(), make_source()
    now = timezone.now()
    due = now - timedelta(seconds=1)
    Source.objects.filter(pk__in=[given_back.pk, moved.pk]).update(next_poll_at=due)
    assert sorted(polling.sources_claim_due(now)) == sorted([given_back.pk, moved.pk])
    backed_off = now + timedelta(hours=2)
    Source.objects.filter(pk=moved.pk).update(next_poll_at=backed_off)

    polling.source_poll_due_again(given_back.pk, now)
    polling.source_poll_due_again(moved.pk, now)

    assert Source.objects.get(pk=given_back.pk).next_poll_at == now
    assert Source.objects.get(pk=moved.pk).next_poll_at == backed_off
    assert polling.sources_claim_due() == [given_back.pk]


def test_the_plan_reads_live_state_with_one_list_per_namespace(
    repo, make_namespaces, make_source, monkeypatch, cluster
):
    namespaces = make_namespaces("a", "b", "c")
    repo.write("sluice.yaml", policy(namespaces))
    for index in range(30):
        repo.write(f"configmaps/cm-{index}.yaml", configmap(f"cm-{index}", {"i": str(index)}))
    repo.commit()
    source = make_source()
    reconcile.source_sync(source.pk)

    lists: list[str] = []
    real_list = Cluster.list_configmaps

    def counting_list(self, namespace, **kwargs):
        lists.append(namespace)
        return real_list(self, namespace, **kwargs)

    def no_get(self, namespace, name):
        raise AssertionError(f"GET {namespace}/{name}: the plan must not read objects one by one")

    monkeypatch.setattr(Cluster, "list_configmaps", counting_list)
    monkeypatch.setattr(Cluster, "get_configmap", no_get)
    result = reconcile.source_sync(source.pk)

    assert result.summary == {"unchanged": 90}
    assert sorted(lists) == sorted(namespaces)


def test_an_administrator_allowlist_rejects_namespaces_the_repository_wants(
    repo, make_namespaces, make_source, cluster
):
    allowed, forbidden = make_namespaces("allowed", "forbidden")
    repo.write_all(
        {
            "sluice.yaml": policy([allowed, forbidden]),
            "configmaps/app.yaml": configmap("app", {"v": "1"}),
        }
    )
    repo.commit()
    source = make_source(allowed_namespaces=[allowed])

    result = reconcile.source_sync(source.pk)

    assert result.outcome == "rejected"
    assert (
        f"namespace '{forbidden}' is outside the namespaces this source may manage ({allowed})"
        in result.errors[0]
    )
    assert cluster.get_configmap(allowed, "app") is None


def test_a_revision_rejected_under_a_narrowed_scope_is_valid_again_once_it_is_widened_back(
    repo, make_namespaces, make_source
):
    from gitops.fetch.revisions import revision_desired_state, revision_fetch
    from gitops.models import Revision, Source

    first, second = make_namespaces("first", "second")
    repo.write_all(
        {"sluice.yaml": policy([first, second]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit()
    source = make_source(allowed_namespaces=[first, second])
    head, _ = revision_fetch(source)
    assert revision_desired_state(source, head) is not None

    def load_with(namespaces: list[str]) -> Revision:
        Source.objects.filter(pk=source.pk).update(allowed_namespaces=namespaces)
        source.refresh_from_db()
        head.refresh_from_db()
        revision_desired_state(source, head)
        head.refresh_from_db()
        return head

    assert load_with([first]).outcome == Revision.Outcome.REJECTED
    # The worker still remembers the revision as loaded under the wider scope: a widened scope must
    # not answer from that memory alone and leave the row rejected.
    assert load_with([first, second]).outcome == Revision.Outcome.VALID
    assert head.errors == []


class _Stream:
    """A source whose every pass is followed by a push: a new commit, then the request a busy
    source records. Tasks the reconcile sends are kept in ``sent``, not queued."""

    def __init__(self, repo, namespace, source, monkeypatch) -> None:
        from gitops import schedule

        self.repo, self.namespace, self.source = repo, namespace, source
        self.pushed = ["0"]
        self.passes = 0
        self.actors: list[str] = []
        self.after_pass = lambda: None
        self.sent: list[tuple[str, dict, bool]] = []
        self.real_pass = reconcile._measured
        monkeypatch.setattr(reconcile, "_measured", self._pass_then_a_push_arrives)
        monkeypatch.setattr(schedule.app, "send_task", self._keep)

    def _pass_then_a_push_arrives(self, source, actor, *args, **options):
        result = self.real_pass(source, actor, *args, **options)
        self.passes += 1
        self.actors.append(actor)
        self.pushed.append(str(len(self.pushed)))
        self.repo.write("configmaps/app.yaml", configmap("app", {"v": self.pushed[-1]}))
        self.repo.commit()
        Source.objects.filter(pk=self.source.pk).update(sync_queued=True, sync_requested_at=timezone.now())
        self.after_pass()
        return result

    def _keep(self, name, kwargs, eta, ignore_result, headers=None):
        self.sent.append((name, kwargs, ignore_result))
        return Sent()


@pytest.fixture
def stream(repo, make_namespaces, make_source, monkeypatch):
    (namespace,) = make_namespaces("stream")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "0"})})
    repo.commit()
    return _Stream(repo, namespace, make_source(), monkeypatch)


def test_a_stream_of_pushes_is_carried_on_by_one_fresh_automatic_task_whose_result_nobody_stores(
    stream, monkeypatch, cluster
):
    """A push that lands while its source reconciles is run by the holder after its pass; after
    MAX_COALESCED_RUNS passes a fresh task carries on, so a stream of pushes neither starves other
    sources nor gets dropped. That task is as automatic as the stream (a source suspended by then
    does not run it) and is sent with ``ignore_result``: nobody reads its result."""
    from gitops import schedule, source_admin
    from gitops.tasks import sync_source

    result = reconcile.source_sync(stream.source.pk, automatic=True)

    applied = cluster.get_configmap(stream.namespace, "app")["data"]["v"]
    assert result.outcome == "applied", result
    assert applied == str(reconcile.MAX_COALESCED_RUNS - 1), "each pass applies the newest commit"
    sent = stream.sent
    carried = [(name, kwargs["automatic"], kwargs["wait_if_busy"], ignored) for name, kwargs, ignored in sent]
    assert carried == [(schedule.SYNC_TASK, True, False, True)]

    monkeypatch.setattr(reconcile, "_measured", stream.real_pass)

    def carry_on() -> str:
        return sync_source.apply(kwargs=sent[0][1], ignore_result=True).get()["outcome"]

    source_admin.source_suspend(Source.objects.get(pk=stream.source.pk))
    assert carry_on() == "suspended"
    source_admin.source_resume(Source.objects.get(pk=stream.source.pk))
    assert carry_on() == "applied"
    assert cluster.get_configmap(stream.namespace, "app")["data"]["v"] == stream.pushed[-1]


def test_the_pushes_a_persons_sync_runs_after_its_own_pass_are_not_recorded_as_that_persons(stream):
    """Nobody knows who pushed while a person's sync ran: those passes, and the task that carries
    them on, run as Sluice. After a push's own pass, the pushes it runs keep its actor."""
    runs = reconcile.MAX_COALESCED_RUNS
    reconcile.source_sync(stream.source.pk, actor="ines")
    reconcile.source_sync(stream.source.pk, actor="webhook:github", automatic=True)

    assert stream.actors == ["ines"] + ["sluice"] * (runs - 1) + ["webhook:github"] * runs
    assert [kwargs["actor"] for _, kwargs, _ in stream.sent] == ["sluice", "webhook:github"]
    logged = Change.objects.filter(source=stream.source).order_by("id").values_list("commit", "actor")
    first_commit = stream.repo.git("rev-list", "--max-parents=0", "HEAD").strip()
    actors_by_commit = dict(logged)
    assert actors_by_commit.pop(first_commit) == "ines", "the person's own pass is theirs"
    assert set(actors_by_commit.values()) == {"sluice", "webhook:github"}, actors_by_commit


def test_a_stream_whose_carrying_on_the_broker_refuses_is_carried_on_by_beat_and_is_no_failure(
    stream, monkeypatch, cluster
):
    """Every pass succeeded: a refused send of the task that would carry on must not make the sync a
    failure (a back-off, an error on the source); the poll is due now, so beat's sweep carries on."""
    tried = refuse_sends(monkeypatch)

    result = reconcile.source_sync(stream.source.pk, automatic=True)

    assert result.outcome == "applied", result
    assert stream.passes == reconcile.MAX_COALESCED_RUNS
    assert [kwargs["source_id"] for kwargs in tried] == [stream.source.pk], "carrying on was tried"
    source = Source.objects.get(pk=stream.source.pk)
    assert (source.consecutive_failures, source.last_error) == (0, "")
    assert source.next_poll_at <= timezone.now(), "beat's next sweep carries on"


def test_a_source_suspended_during_a_stream_of_pushes_takes_no_further_automatic_pass(stream, cluster):
    """Suspending is an operator's brake: the pass under way ends, and the pushes it would have run
    next (and carried on) wait until the source is resumed."""
    from gitops import source_admin

    def suspend_after_the_second_pass() -> None:
        if stream.passes == 2:
            source_admin.source_suspend(Source.objects.get(pk=stream.source.pk))

    stream.after_pass = suspend_after_the_second_pass

    result = reconcile.source_sync(stream.source.pk, automatic=True)

    assert result.outcome == "applied", result
    assert stream.passes == 2
    assert stream.sent == []
    assert cluster.get_configmap(stream.namespace, "app")["data"]["v"] == "1", "the push after it waits"
    # Not left queued: beat's sweep claims only sources not queued, for a due abort or rollback.
    assert not Source.all_objects.get(pk=stream.source.pk).sync_queued


def test_pushes_that_come_during_a_persons_sync_through_a_closed_window_wait_for_the_window(stream, cluster):
    """A deny window with ``manualSync`` lets a person's sync through, and only that: the pushes
    that came while it ran are run by it as automatic ones, so the window holds them."""
    deny_window_letting_people_sync()

    result = reconcile.source_sync(stream.source.pk, manual=True)

    assert cluster.get_configmap(stream.namespace, "app")["data"]["v"] == "0", "only the person's commit"
    assert stream.passes == reconcile.MAX_COALESCED_RUNS, "each later push planned and held"
    assert [kwargs["manual"] for _, kwargs, _ in stream.sent] == [False]
    # The person hears of their own pass, and why the pushes after it wait.
    assert result.outcome == "applied", result
    assert result.commit == stream.repo.git("rev-list", "--max-parents=0", "HEAD").strip(), result
    assert result.held.startswith("in a sync window that denies changes until "), result


def test_a_request_stamped_by_a_worker_whose_clock_lags_is_run_all_the_same(stream, cluster):
    """The holder runs any request stored after its pass began, whatever time the requesting worker's
    clock put on it: comparing two machines' clocks lost such a request (and left sync_queued set)."""

    def stamped_by_a_clock_ten_seconds_behind() -> None:
        earlier = timezone.now() - timedelta(seconds=10)
        Source.objects.filter(pk=stream.source.pk).update(sync_requested_at=earlier)

    stream.after_pass = stamped_by_a_clock_ten_seconds_behind

    reconcile.source_sync(stream.source.pk, automatic=True)

    assert stream.passes == reconcile.MAX_COALESCED_RUNS
    assert cluster.get_configmap(stream.namespace, "app")["data"]["v"] == str(
        reconcile.MAX_COALESCED_RUNS - 1
    )


def test_a_push_that_came_during_a_pass_that_failed_is_polled_at_once(stream, cluster):
    """Its commit may be the fix: the failure is recorded (the back-off counts it), but the source's
    poll is due now, so beat runs it within seconds instead of at the back-off's next poll (an hour,
    at worst). No broker is needed to record it."""
    from gitops.errors import PermanentError
    from gitops.tasks import sync_source

    def fails_once_a_push_came() -> None:
        raise PermanentError("the cluster refused the whole pass")

    stream.after_pass = fails_once_a_push_came

    answer = sync_source.apply(
        kwargs={"source_id": stream.source.pk, "automatic": True, "wait_if_busy": False}, ignore_result=True
    ).get()

    assert answer["outcome"] == "failed", answer
    failed = Source.objects.get(pk=stream.source.pk)
    assert (failed.consecutive_failures, failed.last_error) == (1, "the cluster refused the whole pass")
    assert not failed.sync_queued
    assert cluster.get_configmap(stream.namespace, "app")["data"]["v"] == "0"
    assert polling.sources_claim_due() == [stream.source.pk], "the poll is due at once"
    stream.after_pass = lambda: None
    poll = {"source_id": stream.source.pk, "automatic": True, "wait_if_busy": False}
    assert sync_source.apply(kwargs=poll, ignore_result=True).get()["outcome"] == "applied"
    assert int(cluster.get_configmap(stream.namespace, "app")["data"]["v"]) >= 1, "the push's commit or later"


def test_a_sync_the_broker_refuses_gives_its_claim_back(make_source, monkeypatch):
    """A push claims ``sync_queued`` and sends its task; if the broker refuses the task, a flag left
    set would refuse every later push as already queued (and keep beat's sweep away)."""
    from kombu.exceptions import OperationalError

    from gitops import schedule

    source = make_source()
    refuse_sends(monkeypatch)

    with pytest.raises(schedule.SyncNotQueued) as refused:
        schedule.source_sync_once(source.pk, actor="webhook:generic")
    assert isinstance(refused.value.__cause__, OperationalError)

    assert not Source.objects.get(pk=source.pk).sync_queued
    sent = keep_sends(monkeypatch)
    assert schedule.source_sync_once(source.pk, actor="webhook:generic"), "the next push queues a sync"
    assert len(sent) == 1


def test_sends_the_broker_refuses_after_a_commit_each_give_their_claim_back(make_source, monkeypatch):
    """Lifting a freeze wakes its sources from one transaction; Django skips the callbacks after one
    that raises, so each send is robust there: none is left claimed with no task behind it."""
    from django.db import transaction

    from gitops import schedule

    sources = [make_source() for _ in range(3)]
    Source.objects.update(next_poll_at=timezone.now() + timedelta(hours=1))
    refuse_sends(monkeypatch)

    with transaction.atomic():
        for source in sources:
            assert schedule.source_sync_once(source.pk, actor="cli")

    assert [Source.objects.get(pk=source.pk).sync_queued for source in sources] == [False, False, False]
    # Nothing would wake them again: each is given back as a request and a poll due now.
    given_back = Source.objects.filter(sync_requested_at__isnull=False, next_poll_at__lte=timezone.now())
    assert given_back.count() == 3


@pytest.mark.parametrize(
    "blip",
    [TemporaryError("the Git host did not answer"), OperationalError("deadlock detected")],
    ids=["git", "database-deadlock"],
)
def test_a_push_pass_that_fails_after_a_persons_sync_is_retried_as_a_push_not_as_the_person(
    stream, monkeypatch, cluster, blip
):
    """The pass a person's sync runs for the pushes behind it fails on a blip (the Git host, or a
    database deadlock). Its retry runs what it ran (automatic, as Sluice); retried as the person's
    request, its first pass would carry the pushes through a window that lets only the person's sync
    out, in the person's name."""
    from gitops.tasks import sync_source

    deny_window_letting_people_sync()
    real_pass, asked = stream.real_pass, []

    def blip_on_the_second_pass(source, actor, *args, **options):
        asked.append((actor, options["manual"], options["retry_failed"]))
        if len(asked) == 2:
            raise blip
        return real_pass(source, actor, *args, **options)

    stream.real_pass = blip_on_the_second_pass

    sync_source.apply(
        kwargs={"source_id": stream.source.pk, "actor": "ines", "manual": True, "retry_failed": True}
    )

    assert asked[0] == ("ines", True, True)
    assert len(asked) > 2, "retried"
    assert set(asked[1:]) == {("sluice", False, False)}, asked
    assert cluster.get_configmap(stream.namespace, "app")["data"]["v"] == "0", "only the person's commit"
    first_commit = stream.repo.git("rev-list", "--max-parents=0", "HEAD").strip()
    assert set(
        Change.objects.filter(source=stream.source, actor="ines").values_list("commit", flat=True)
    ) == {first_commit}


def test_a_blip_after_waiting_for_a_busy_source_is_still_retried(stream, monkeypatch, cluster):
    """Celery counts a busy source's retries and a blip's together: a person's sync that waited
    for a running pass must not give up at its first temporary error."""
    from gitops.tasks import sync_source

    monkeypatch.setattr(reconcile, "MAX_COALESCED_RUNS", 1)
    real_pass, tries = stream.real_pass, []

    def one_blip(source, actor, *args, **options):
        tries.append(actor)
        if len(tries) == 1:
            raise TemporaryError("the Git host did not answer")
        return real_pass(source, actor, *args, **options)

    stream.real_pass = one_blip

    result = sync_source.apply(kwargs={"source_id": stream.source.pk, "actor": "ines"}, retries=5).get()

    assert result["outcome"] == "applied", result
    assert len(tries) == 2
    assert Source.objects.get(pk=stream.source.pk).consecutive_failures == 0


def test_a_scope_narrowed_during_a_stream_of_pushes_holds_for_the_passes_after_it(stream, cluster):
    """An administrator narrows the source's namespaces while a stream of pushes keeps one task
    passing: the next pass validates against the narrowed scope, not the one the task read first."""

    def narrow_after_the_first_pass() -> None:
        if stream.passes == 1:
            Source.objects.filter(pk=stream.source.pk).update(allowed_namespaces=["elsewhere-*"])

    stream.after_pass = narrow_after_the_first_pass

    result = reconcile.source_sync(stream.source.pk, automatic=True)

    assert stream.passes == reconcile.MAX_COALESCED_RUNS
    assert result.outcome == "rejected", result
    assert cluster.get_configmap(stream.namespace, "app")["data"]["v"] == "0", "nothing past the narrowing"


def test_a_queued_mark_whose_task_was_lost_is_taken_over_after_ten_minutes(
    repo, make_namespaces, make_source
):
    """A broker that failed over lost the task a push or beat's sweep queued: the mark stayed, so later
    pushes were "already queued" and the sweep skipped the source's aborts until its next poll, which a
    suspended source never has. A mark older than SYNC_QUEUED_STALE is taken over."""
    from gitops import schedule

    (namespace,) = make_namespaces("queued")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "0"})})
    repo.commit()
    source = make_source()
    assert schedule.sync_queued_claim(source.pk)
    assert not schedule.sync_queued_claim(source.pk), "queued a moment ago: a second push queues nothing"

    lost = timezone.now() - schedule.SYNC_QUEUED_STALE - timedelta(seconds=1)
    Source.objects.filter(pk=source.pk).update(sync_queued_at=lost)

    assert schedule.sync_queued_claim(source.pk)
    assert Source.objects.get(pk=source.pk).sync_queued_at > lost


def test_a_pass_that_starts_a_timed_pause_while_the_broker_refuses_ends_paused_not_failed(
    repo, make_namespaces, make_source, monkeypatch
):
    """A pass sends a wake for the end of a timed pause after the rollout's state is saved, outside any
    transaction. A broker that refuses it (Redis away a moment) loses nothing, since beat's sweep wakes
    paused rollouts too: the pass ends as it would have. Before, the refusal raised out of the pass,
    which counted as a failure and backed the source off."""
    canary, rest = make_namespaces("canary", "rest")
    repo.write_all(
        {"sluice.yaml": policy([canary, rest]), "configmaps/app.yaml": configmap("app", {"v": "1"})}
    )
    repo.commit("v1")
    source = make_source()
    assert reconcile.source_sync(source.pk).outcome == "applied"
    steps = [{"setWeight": 50}, {"pause": {"duration": "1h"}}]
    repo.write_all(
        {
            "sluice.yaml": policy([canary, rest], rollout={"steps": steps}),
            "configmaps/app.yaml": configmap("app", {"v": "2"}),
        }
    )
    repo.commit("v2")
    tried = refuse_sends(monkeypatch)

    result = reconcile.source_sync(source.pk)

    assert (result.outcome, result.errors) == ("paused", []), result
    assert any(kwargs.get("source_id") == source.pk for kwargs in tried), "the wake was tried"
    assert Source.objects.get(pk=source.pk).last_error == ""


def test_a_pass_ended_by_a_database_deadlock_is_retried_soon_not_backed_off(
    repo, make_namespaces, make_source, monkeypatch
):
    """PostgreSQL ends one of two transactions that wait for each other (a deadlock), or a serializable
    one, or drops a connection a moment: the pass is retried soon, as for any blip. Before, it counted
    as an unforeseen failure, and the source backed off for its poll interval."""
    from gitops import schedule, tasks

    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit("v1")
    source = make_source()
    monkeypatch.setattr(schedule, "_send", lambda *args, **kwargs: "")  # later passes run here
    real_sync, tries = tasks.source_sync, []

    def deadlocked_once(*args, **kwargs):
        tries.append(1)
        if len(tries) == 1:
            raise OperationalError("deadlock detected")
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(tasks, "source_sync", deadlocked_once)

    result = tasks.sync_source.apply(kwargs={"source_id": source.pk}).get()

    assert len(tries) == 2, "retried"
    assert result["outcome"] == "applied", result
    assert Source.objects.get(pk=source.pk).consecutive_failures == 0


def test_what_asks_for_a_sync_of_a_backing_off_source_is_stored_as_a_request_first(make_source):
    """A lifted freeze or a drift the live cache saw asks for a sync as a push does. On a source backing
    off, the sync queued may be a pass that carries out decisions only and does not fetch: the ask is
    stored as a request before the claim, which that pass leaves for the full pass after it. A source
    not backing off gets no such write."""
    from gitops import schedule

    backing_off, healthy = make_source(), make_source()
    Source.objects.filter(pk=backing_off.pk).update(
        consecutive_failures=2, next_poll_at=timezone.now() + timedelta(minutes=30)
    )
    for source in (backing_off, healthy):
        assert schedule.sync_queued_claim(source.pk), "a queued pass (beat's sweep, say)"

    for source in (backing_off, healthy):
        assert not schedule.source_sync_once(source.pk, actor="sluice"), "already queued"

    assert Source.objects.get(pk=backing_off.pk).sync_requested_at is not None
    assert Source.objects.get(pk=healthy.pk).sync_requested_at is None


def test_an_orphaned_requests_queued_mark_has_a_time_so_a_lost_task_is_taken_over(make_source):
    """The sweep of orphaned requests marked the source queued without a time. A mark without one is
    never taken over: when that task was lost (a broker failed over), every push and wake after it was
    "already queued" until the next poll, hours away for a source that relies on webhooks."""
    from django.db.models import F

    from gitops import schedule

    source = make_source()
    Source.objects.filter(pk=source.pk).update(
        sync_queued=False, sync_queued_at=None, sync_requested_at=timezone.now() - timedelta(seconds=31)
    )
    assert polling.sources_claim_orphaned_requests() == [source.pk]
    assert not schedule.sync_queued_claim(source.pk), "queued a moment ago: a push adds nothing"

    lost = schedule.SYNC_QUEUED_STALE + timedelta(minutes=1)
    Source.objects.filter(pk=source.pk).update(sync_queued_at=F("sync_queued_at") - lost)
    assert schedule.sync_queued_claim(source.pk), "the lost task's mark is taken over"


def test_a_source_removed_while_its_sync_waited_for_a_lost_pass_answers_gone(make_source, monkeypatch):
    """The lock waits (seconds) for a lost pass's claim to lapse, and lets the source go meanwhile: a
    removal that finished then left the pass no run, and the task died on an IndexError instead of
    answering that the source is gone."""
    from gitops import reconcile as reconcile_module

    source = make_source()

    def removed_while_waiting() -> bool:
        Source.objects.filter(pk=source.pk).update(deleted_at=timezone.now())
        return True

    monkeypatch.setattr(reconcile_module, "lock_waited", removed_while_waiting)
    result = reconcile.source_sync(source.pk)

    assert result.outcome is reconcile.Outcome.GONE
