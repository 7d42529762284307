"""A source moved to another directory of its repository (``update-source --path``) at the same commit
reads other content: it goes out as a rollout of its own, through the new directory's steps and gates,
never at once. Before, the newest rollout was of that commit already, so nothing rolled out: the new
content was drift, healed at once everywhere with ``selfHeal``, and never applied without it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from gitops import polling, source_admin
from gitops.models import Rollout, RolloutEvent, Source
from gitops.rollout import decisions
from gitops.rollout.lifecycle import SourceMovedMeanwhile
from tests.gitrepo import GitRepo, configmap, policy
from tests.passes import HeldPass
from tests.rollouts import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def version_in(cluster, namespace: str) -> str | None:
    live = cluster.get_configmap(namespace, "app")
    return None if live is None else (live.get("data") or {}).get("VERSION")


def aborted_then_moved(source, sync, people, **moved):
    """The source's first rollout, paused at its gate and aborted; then the source moved (``moved``:
    the settings that move it). Returns the source as moved and the aborted rollout."""
    sync(source)
    paused = wait_for(source, phase="Paused", waiting_for="approval")
    decisions.rollout_abort(paused.pk, user=people["approver"], reason="not now")
    wait_for(source, phase="Aborted", of=paused)
    return source_admin.source_update(source, **moved), paused


@pytest.mark.parametrize("self_heal", [True, False], ids=["selfHeal", "no selfHeal"])
def test_a_source_moved_to_another_directory_rolls_its_content_out_through_its_steps(
    repo, make_namespaces, make_source, sync, cluster, people, self_heal
):
    targets = make_namespaces("a", "b")
    canary = {"steps": [{"setWeight": 50}, {"pause": {}}]}
    repo.write_all(
        {
            "staging/sluice.yaml": policy(targets, selfHeal=self_heal),
            "staging/configmaps/app.yaml": configmap("app", {"VERSION": "staging"}),
            "prod/sluice.yaml": policy(targets, selfHeal=self_heal, rollout=canary),
            "prod/configmaps/app.yaml": configmap("app", {"VERSION": "prod"}),
        }
    )
    repo.commit("two directories")
    source = make_source(path="staging")
    assert sync(source)["outcome"] == "applied"
    repo.write("staging/configmaps/app.yaml", configmap("app", {"VERSION": "staging-2"}))
    commit = repo.commit("staging only", author=("Bo", "bo@example.com"))
    assert sync(source)["outcome"] == "applied"
    first = wait_for(source, phase="Completed")
    assert [version_in(cluster, ns) for ns in targets] == ["staging-2", "staging-2"]

    source = source_admin.source_update(source, path="prod")
    sync(source)

    moved = wait_for(source, phase="Paused", waiting_for="approval")
    assert moved.pk != first.pk and moved.revision_id == first.revision_id
    assert moved.revision.commit == commit and moved.path == "prod" and first.path == "staging"
    assert [version_in(cluster, ns) for ns in targets] == ["prod", "staging-2"], "half, then the gate"
    # Prod's content came with the first commit, and only commits of prod count (since 2026-12-07): the
    # staging-only one's author brought nothing of it.
    assert moved.commit_identities == ["ada@example.com"], "as a first rollout, of its directory"
    started = RolloutEvent.objects.get(rollout=moved, kind="started")
    assert started.message.endswith(": the source moved from directory staging to directory prod")
    sync(source)
    assert [version_in(cluster, ns) for ns in targets] == ["prod", "staging-2"], "not healed past the gate"

    decisions.rollout_promote(moved.pk, user=people["approver"])
    wait_for(source, phase="Completed", of=moved)
    assert [version_in(cluster, ns) for ns in targets] == ["prod", "prod"]
    assert sync(source)["outcome"] != "failed"
    assert Rollout.objects.filter(source=source).count() == 3, "no other rollout once it went out"


def test_a_rollout_aborted_before_the_move_is_not_retried_with_the_new_directorys_content(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """A retry repeats the rollout's own steps, and the pass reads the source's directory as it is now:
    the new directory's content would go out under the old one's steps. Its next pass starts the new
    directory's rollout instead."""
    targets = make_namespaces("a", "b")
    canary = {"steps": [{"setWeight": 50}, {"pause": {}}]}
    repo.write_all(
        {
            "staging/sluice.yaml": policy(targets, rollout=canary),
            "staging/configmaps/app.yaml": configmap("app", {"VERSION": "staging"}),
            "prod/sluice.yaml": policy(targets, rollout={"steps": [{"pause": {}}]}),
            "prod/configmaps/app.yaml": configmap("app", {"VERSION": "prod"}),
        }
    )
    repo.commit("two directories")
    source, paused = aborted_then_moved(make_source(path="staging"), sync, people, path="prod")

    with pytest.raises(decisions.RolloutError, match="moved to another directory since \\(prod\\)"):
        decisions.rollout_retry(paused.pk, user=people["approver"])
    sync(source)
    moved = wait_for(source, phase="Paused", waiting_for="approval")
    assert moved.pk != paused.pk and moved.path == "prod" and moved.step_index == 0
    assert [version_in(cluster, ns) for ns in targets] == [None, None], "the prod directory's gate first"


def test_a_pass_that_read_the_directory_before_a_move_starts_no_rollout_of_it(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch
):
    """The move was not refused: no rollout was under way. The pass, which loaded the old directory's
    content, would have started a rollout of it after the move; it fails instead, and the next pass reads
    the new directory."""
    (target,) = make_namespaces("a")
    repo.write_all(
        {
            "staging/sluice.yaml": policy([target]),
            "staging/configmaps/app.yaml": configmap("app", {"VERSION": "staging"}),
            "prod/sluice.yaml": policy([target]),
            "prod/configmaps/app.yaml": configmap("app", {"VERSION": "prod"}),
        }
    )
    repo.commit("two directories")
    source = make_source(path="staging")
    assert sync(source)["outcome"] == "applied"
    repo.write("staging/configmaps/app.yaml", configmap("app", {"VERSION": "staging-2"}))
    commit = repo.commit("staging only")

    with HeldPass(monkeypatch, source) as held:
        source_admin.source_update(source, path="prod")
    assert isinstance(held.error, SourceMovedMeanwhile), held.error or held.result
    assert version_in(cluster, target) == "staging", "nothing of the old directory's new commit went out"
    assert not Rollout.objects.filter(source=source, revision__commit=commit).exists()

    assert sync(source)["outcome"] == "applied"
    assert version_in(cluster, target) == "prod"
    assert Rollout.objects.get(source=source, revision__commit=commit).path == "prod"


@pytest.mark.parametrize("moved", ["url", "branch"])
def test_a_pass_that_fetched_before_a_move_to_another_repository_or_branch_starts_no_rollout(
    repo, tmp_path, make_namespaces, make_source, sync, cluster, monkeypatch, moved
):
    """The move was not refused: no rollout was under way. The pass, which fetched the old repository's
    (or branch's) new commit, started a rollout of it after the move (before 2026-12-07): what an
    administrator moved the source away from, a compromised repository or the wrong branch, went out."""
    (target,) = make_namespaces("a")
    repo.write_all(
        {"sluice.yaml": policy([target]), "configmaps/app.yaml": configmap("app", {"VERSION": "1"})}
    )
    repo.commit("first")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    elsewhere = GitRepo(tmp_path / "elsewhere", branch="release")
    elsewhere.write_all(
        {"sluice.yaml": policy([target]), "configmaps/app.yaml": configmap("app", {"VERSION": "release"})}
    )
    elsewhere.commit("the release")
    if moved == "branch":  # the same repository, another branch
        repo.git("fetch", "--quiet", str(elsewhere.remote), "release")
        repo.git("push", "--quiet", "origin", "FETCH_HEAD:refs/heads/release")
    repo.write("configmaps/app.yaml", configmap("app", {"VERSION": "old-2"}))
    commit = repo.commit("on the branch left behind")
    new_place = {"url": elsewhere.url, "branch": "release"} if moved == "url" else {"branch": "release"}

    with HeldPass(monkeypatch, source) as held:
        source_admin.source_update(source, **new_place)
    assert isinstance(held.error, SourceMovedMeanwhile), held.error or held.result
    assert version_in(cluster, target) == "1", "nothing of the old branch's new commit went out"
    assert not Rollout.objects.filter(source=source, revision__commit=commit).exists()
    source.refresh_from_db()
    assert source.last_commit == "", "its head where it follows now is not known yet"

    assert sync(source)["outcome"] == "applied"
    assert version_in(cluster, target) == "release"


def test_a_rollout_of_the_branch_left_behind_is_not_retried(
    repo, make_namespaces, make_source, sync, cluster, people
):
    """Until the source's next pass fetched its new branch, its head was the commit it followed before, and
    a retry of that commit's failed or aborted rollout went out from the branch it had left."""
    (target,) = make_namespaces("a")
    canary = {"steps": [{"pause": {}}]}
    repo.write_all(
        {
            "sluice.yaml": policy([target], rollout=canary),
            "configmaps/app.yaml": configmap("app", {"VERSION": "1"}),
        }
    )
    repo.commit("first")
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/release")
    _, paused = aborted_then_moved(make_source(), sync, people, branch="release")

    with pytest.raises(decisions.RolloutError, match="follows another repository or branch since"):
        decisions.rollout_retry(paused.pk, user=people["approver"])
    assert version_in(cluster, target) is None


def test_a_change_of_where_git_is_or_of_the_interval_brings_the_next_poll_forward(make_source) -> None:
    """The next poll stayed where the settings before had put it: a day away after the interval became a
    minute, or a back-off's hour away after the credentials were fixed (before 2026-12-07)."""
    source = make_source(poll_interval=timedelta(days=1))
    far = timezone.now() + timedelta(hours=20)
    Source.objects.filter(pk=source.pk).update(next_poll_at=far)
    source.refresh_from_db()

    source = source_admin.source_update(source, poll_interval=timedelta(minutes=1))
    assert source.next_poll_at <= timezone.now() + timedelta(minutes=1)
    source.refresh_from_db()
    assert source.next_poll_at <= timezone.now() + timedelta(minutes=1), "saved"

    Source.objects.filter(pk=source.pk).update(next_poll_at=far)
    source.refresh_from_db()
    source = source_admin.source_update(source, credentials_ref="env:SLUICE_TEST_GIT_TOKEN")
    source.refresh_from_db()
    assert source.next_poll_at <= timezone.now()
    assert polling.sources_claim_due() == [source.pk]

    backing_off = timezone.now() + timedelta(minutes=30)  # a source that failed a few times
    Source.objects.filter(pk=source.pk).update(next_poll_at=backing_off, consecutive_failures=4)
    source.refresh_from_db()
    source_admin.source_update(source, required_approvals=1)
    source.refresh_from_db()
    assert source.next_poll_at == backing_off, "a change a fetch does not read leaves its back-off alone"
