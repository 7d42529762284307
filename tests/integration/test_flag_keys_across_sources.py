"""A flag key belongs to one source in a cluster's flags namespace: flagd serves every flag set of the
namespace together, merged by key, and of two definitions the one it read last. A revision that would
publish a key another source publishes there is rejected as a whole, before anything is applied, and
checked again at every pass while it is: once the other source no longer publishes it, the same commit
goes through. A revision once accepted is not asked again."""

from __future__ import annotations

import json
import uuid

import pytest
from django.conf import settings

from gitops.desired.errors import ValidationError
from gitops.models import ApplyIntent, Change, ManagedObject, PublishedFlag, Revision, Rollout
from gitops.rollout import decisions, lifecycle
from tests.gitrepo import GitRepo, configmap, policy
from tests.passes import HeldPass
from tests.rollouts import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SWITCH = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
BANNER = {"state": "ENABLED", "variants": {"blue": "blue", "green": "green"}, "defaultVariant": "blue"}
PROBLEM = (
    "flagd serves every flag set of a namespace together, merged by key, and of two definitions the one "
    "it read last, so one key belongs to one source"
)
ADVICE = "take it out of one of them, or publish into another flags namespace"


def flag_set(**flags: dict) -> str:
    # Indented: each key on a line of its own, the first at line 3.
    return json.dumps({"flags": flags}, indent=2)


def publish(
    repo: GitRepo, app: str, flags_ns: str, files: dict, *, steps=None, message: str = "flags"
) -> str:
    document = policy([app], flags={"namespace": flags_ns})
    if steps:
        document["rollout"] = {"steps": steps}
    repo.write_all({"sluice.yaml": document, **files})
    return repo.commit(message)


def errors_of(revision: Revision) -> list[str]:
    revision.refresh_from_db()
    return [str(ValidationError.from_dict(dict(error))) for error in revision.errors]


def rejection(file: str, line: int, key: str, where: str, source: str, *, leaving: bool = False) -> str:
    until = f"{source!r} is taking it out: it counts until that rollout completes" if leaving else ADVICE
    return (
        f"{file}:{line}: flags.{key}: the flag {key!r} is also published into {where} by source "
        f"{source!r}: {PROBLEM}; {until}"
    )


def test_a_key_another_source_publishes_rejects_the_revision_until_that_source_has_taken_it_out(
    repo, make_namespaces, make_source, sync, cluster, people, tmp_path
):
    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    publish(
        repo, app_a, flags_ns, {"flags/checkout.json": flag_set(**{"new-checkout": SWITCH, "banner": BANNER})}
    )
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    assert sync(shop)["outcome"] == "applied"

    other = GitRepo(tmp_path / "payments")
    files = {
        "flags/payments.json": flag_set(**{"new-checkout": SWITCH, "pay-later": SWITCH}),
        "configmaps/app.yaml": configmap("app", {"V": "1"}),
    }
    commit = publish(other, app_b, flags_ns, files)
    payments = make_source(name=f"payments-{uuid.uuid4().hex[:6]}", url=other.url)
    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    expected = rejection("flags/payments.json", 3, "new-checkout", where, shop.name)

    result = sync(payments)

    assert (result["outcome"], result["errors"]) == ("rejected", [expected]), result
    revision = Revision.objects.get(source=payments, commit=commit)
    assert revision.outcome == Revision.Outcome.REJECTED and errors_of(revision) == [expected]
    # Nothing of the revision reached the cluster, nor was meant to.
    assert cluster.get_configmap(flags_ns, "payments") is None
    assert cluster.get_configmap(app_b, "app") is None
    for model in (Rollout, ApplyIntent, Change, PublishedFlag, ManagedObject):
        assert not model.objects.filter(source=payments).exists(), model
    # A pass that finds it as it was (its validation remembered) rejects it again.
    assert sync(payments)["errors"] == [expected]
    assert not Rollout.objects.filter(source=payments).exists()

    # What `gitops diff` and a preview of any revision say.
    from gitops import preview
    from gitops.vocabulary import PreviewOutcome

    shown = preview.source_preview(payments)
    assert shown.plan is None and errors_of(shown.revision) == [expected]
    ahead = preview.revision_preview(payments, commit)
    assert ahead.outcome is PreviewOutcome.REJECTED and [str(error) for error in ahead.errors] == [expected]

    # shop takes the key out, in a canary: the old side is served it until 100%, so it still counts.
    steps = [{"setWeight": 50}, {"pause": {}}]
    publish(
        repo, app_a, flags_ns, {"flags/checkout.json": flag_set(banner=BANNER)}, steps=steps, message="out"
    )
    sync(shop)
    paused = wait_for(shop, phase="Paused", waiting_for="approval", weight=50)
    assert PublishedFlag.objects.get(source=shop, key="new-checkout").removed
    leaving = rejection("flags/payments.json", 3, "new-checkout", where, shop.name, leaving=True)
    assert sync(payments)["errors"] == [leaving]
    assert cluster.get_configmap(flags_ns, "payments") is None

    decisions.rollout_promote(paused.pk, user=people["approver"])
    wait_for(shop, phase="Completed")
    assert not PublishedFlag.objects.filter(source=shop, key="new-checkout").exists()

    # The same commit, at the next pass.
    result = sync(payments)

    assert (result["outcome"], result["errors"]) == ("applied", []), result
    published = json.loads(cluster.get_configmap(flags_ns, "payments")["data"]["payments.flagd.json"])
    assert set(published["flags"]) == {"new-checkout", "pay-later"}
    assert cluster.get_configmap(app_b, "app")["data"] == {"V": "1"}
    assert Revision.objects.get(pk=revision.pk).outcome != Revision.Outcome.REJECTED
    assert PublishedFlag.objects.filter(source=payments, key="new-checkout").exists()


def test_a_key_in_another_flags_namespace_is_fine_and_a_sources_own_keys_never_conflict(
    repo, make_namespaces, make_source, sync, cluster, tmp_path
):
    app_a, app_b, flags_ns, other_ns = make_namespaces("a", "b", "flags", "other-flags")
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(**{"new-checkout": SWITCH})})
    shop = make_source()
    assert sync(shop)["outcome"] == "applied"
    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, other_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(url=other.url)

    assert sync(payments)["outcome"] == "applied"
    assert cluster.get_configmap(other_ns, "payments") is not None

    # Each changes its own key: a source's own catalog rows are never another source's.
    flipped = {**SWITCH, "defaultVariant": "on"}
    publish(
        repo, app_a, flags_ns, {"flags/checkout.json": flag_set(**{"new-checkout": flipped})}, message="on"
    )
    assert sync(shop)["outcome"] == "applied"
    publish(
        other, app_b, other_ns, {"flags/payments.json": flag_set(**{"new-checkout": flipped})}, message="on"
    )
    assert sync(payments)["outcome"] == "applied"


def test_a_key_published_by_two_sources_before_the_check_rejects_the_next_commit_not_the_applied_one(
    repo, make_namespaces, make_source, sync, cluster, tmp_path
):
    """A revision applied before the other source published the key (a release without this check, or
    both starting at once) stays as it is: a catalog that lags the clusters would otherwise reject, and
    roll back, what went out first, and stop its self-heal. The source's next commit is rejected."""
    app_a, app_b, flags_ns, other_ns = make_namespaces("a", "b", "flags", "other-flags")
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(**{"new-checkout": SWITCH})})
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    assert sync(shop)["outcome"] == "applied"
    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, other_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(url=other.url)
    assert sync(payments)["outcome"] == "applied"
    assert sync(payments)["outcome"] == "unchanged"

    # shop's flag set, as if it had been published into payments' flags namespace too.
    ManagedObject.objects.filter(source=shop, namespace=flags_ns, name="checkout").update(namespace=other_ns)
    PublishedFlag.objects.filter(source=shop).update(namespace=other_ns)

    assert sync(payments)["outcome"] == "unchanged", "the applied revision is not asked again"
    other.write_all({"configmaps/app.yaml": configmap("app", {"V": "2"})})
    other.commit("v2")
    result = sync(payments)

    where = f"{settings.SLUICE_CLUSTER_NAME}/{other_ns}"
    assert result["outcome"] == "rejected", result
    assert result["errors"] == [rejection("flags/payments.json", 3, "new-checkout", where, shop.name)]
    assert cluster.get_configmap(other_ns, "payments") is not None, "what was applied stays"
    assert cluster.get_configmap(app_b, "app") is None, "nothing of the new commit"


def test_a_source_being_deleted_counts_until_its_flag_sets_are_pruned(
    repo, make_namespaces, make_source, sync, cluster, tmp_path
):
    from gitops import source_admin
    from gitops.vocabulary import ObjectsOnRemoval
    from tests.workers import poll

    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(**{"new-checkout": SWITCH})})
    shop = make_source()
    assert sync(shop)["outcome"] == "applied"
    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(url=other.url)
    assert sync(payments)["outcome"] == "rejected"

    removal = source_admin.source_remove(shop, objects=ObjectsOnRemoval.PRUNE)

    def ended():
        removal.refresh_from_db()
        return removal if not removal.is_active else None

    assert poll(ended, timeout=90, interval=0.1, what="the removal to end").status == "done"
    assert cluster.get_configmap(flags_ns, "checkout") is None
    assert sync(payments)["outcome"] == "applied"
    assert cluster.get_configmap(flags_ns, "payments") is not None


def test_a_key_counts_in_each_cluster_the_other_source_publishes_it_into_and_nowhere_else(
    repo, make_source, sync, stack, cluster_for, tmp_path
):
    """The catalog keeps one row per flag, naming the cluster of its first publication; where a flag set
    is published is where its source's inventory has it, and that is where its keys count."""
    from gitops import cluster_admin
    from gitops.record.audit import Actor

    default = settings.SLUICE_CLUSTER_NAME
    contexts = {default: "local", "member-1": "member-1", "member-2": "member-2"}
    for member in ("member-1", "member-2"):
        cluster_admin.cluster_add(
            name=member, kubeconfig=stack["KUBECONFIG"], context=member, actor=Actor.command_line("tests")
        )
    app, flags_ns = (f"t{uuid.uuid4().hex[:8]}" for _ in range(2))
    for context in contexts.values():
        for namespace in (app, flags_ns):
            cluster_for(context).create_namespace(namespace)

    def source_in(clusters: list[str], name: str):
        sources_repo = repo if name == "shop" else GitRepo(tmp_path / name)
        document = {
            "targets": [{"cluster": cluster, "namespaces": [app]} for cluster in clusters],
            "flags": {"namespace": flags_ns},
        }
        sources_repo.write_all(
            {"sluice.yaml": document, f"flags/{name}.json": flag_set(**{"new-checkout": SWITCH})}
        )
        sources_repo.commit(name)
        scope = ["t*", "member-*/t*"]
        return make_source(
            name=f"{name}-{uuid.uuid4().hex[:6]}", url=sources_repo.url, allowed_namespaces=scope
        )

    shop = source_in([default, "member-1"], "shop")
    assert sync(shop)["outcome"] in ("applied", "completed")
    # One row, naming one of the two clusters: payments publishes into the other one alone.
    (row,) = PublishedFlag.objects.filter(source=shop, key="new-checkout")
    elsewhere = "member-1" if row.cluster == default else default

    payments = source_in([elsewhere], "payments")
    result = sync(payments)
    assert result["outcome"] == "rejected", result
    expected = rejection("flags/payments.json", 3, "new-checkout", f"{elsewhere}/{flags_ns}", shop.name)
    assert result["errors"] == [expected]
    assert cluster_for(contexts[elsewhere]).get_configmap(flags_ns, "payments") is None

    search = source_in(["member-2"], "search")
    assert sync(search)["outcome"] in ("applied", "completed")
    assert cluster_for("member-2").get_configmap(flags_ns, "search") is not None


def test_a_revision_held_back_by_a_freeze_is_asked_again_before_it_goes_out(
    repo, make_namespaces, make_source, sync, cluster, tmp_path
):
    """Valid when it was fetched, and held back by a freeze: another source started publishing its key
    meanwhile, and the check, skipped for a revision already valid, let it out beside it once unfrozen."""
    from datetime import timedelta

    from django.utils import timezone

    from gitops import freezes

    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(banner=BANNER)})
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    assert sync(shop)["outcome"] == "applied"
    freezes.freeze_set(shop, until=timezone.now() + timedelta(hours=1), reason="hold", by="ines")
    publish(
        repo, app_a, flags_ns, {"flags/checkout.json": flag_set(banner=BANNER, **{"new-checkout": SWITCH})}
    )
    assert sync(shop)["outcome"] == "held"

    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(url=other.url)
    assert sync(payments)["outcome"] == "applied", "shop's key is in no catalog: it never went out"

    result = sync(shop)

    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    assert result["outcome"] == "rejected", result
    assert result["errors"] == [rejection("flags/checkout.json", 11, "new-checkout", where, payments.name)]
    assert "new-checkout" not in cluster.get_configmap(flags_ns, "checkout")["data"]["checkout.flagd.json"]


def test_the_retry_of_a_rolled_back_rollout_is_asked_again_as_its_keys_left_the_catalog(
    repo, make_namespaces, make_source, sync, cluster, people, tmp_path
):
    """A rollback takes the keys its rollout brought out of the catalog, as out of the clusters; another
    source may publish one then. The aborted revision had gone out, and was never asked again: its retry
    published the key beside the other source's. Asked again, the retry started and failed at its pass;
    the retry is refused up front now (its claim is checked as it starts)."""
    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(banner=BANNER)})
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    assert sync(shop)["outcome"] == "applied"
    steps = [{"setWeight": 50}, {"pause": {}}]
    files = {"flags/checkout.json": flag_set(banner=BANNER, **{"new-checkout": SWITCH})}
    publish(repo, app_a, flags_ns, files, steps=steps)
    sync(shop)
    first = wait_for(shop, phase="Paused", waiting_for="approval")
    decisions.rollout_abort(first.pk, user=people["approver"], reason="not now")
    wait_for(shop, phase="Aborted", of=first)
    assert not PublishedFlag.objects.filter(source=shop, key="new-checkout").exists()

    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(url=other.url)
    assert sync(payments)["outcome"] == "applied", "shop publishes the key nowhere now"

    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    refusal = f"'new-checkout' is published into {where} by source '{payments.name}' since rollout {first.pk}"
    with pytest.raises(decisions.RolloutError, match=refusal):
        decisions.rollout_retry(first.pk, user=people["approver"])

    assert Rollout.objects.filter(source=shop).count() == 2, "no retry started"
    served = cluster.get_configmap(flags_ns, "checkout")["data"]["checkout.flagd.json"]
    assert "new-checkout" not in served, "the retry published nothing of the key"
    # A pass of the same revision is asked too, as before.
    expected = rejection("flags/checkout.json", 11, "new-checkout", where, payments.name)
    assert sync(shop)["errors"] == [expected]


def test_a_branch_moved_back_to_a_commit_that_went_out_before_is_asked_again(
    repo, make_namespaces, make_source, sync, cluster, tmp_path
):
    """The later commit's rollout took the key out of the clusters and the catalog, and another source
    started publishing it; the branch then went back to the commit that had it. That commit had gone out
    once, and was not asked again: it published the key beside the other source's."""
    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    files = {"flags/checkout.json": flag_set(banner=BANNER, **{"new-checkout": SWITCH})}
    v1 = publish(repo, app_a, flags_ns, files)
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    assert sync(shop)["outcome"] == "applied"
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(banner=BANNER)}, message="it goes")
    assert sync(shop)["outcome"] == "applied"
    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(url=other.url)
    assert sync(payments)["outcome"] == "applied", "shop publishes the key nowhere now"

    repo.git("reset", "--hard", v1)
    repo.push(force=True)
    result = sync(shop)

    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    assert result["outcome"] == "rejected", result
    assert result["errors"] == [rejection("flags/checkout.json", 11, "new-checkout", where, payments.name)]
    assert "new-checkout" not in cluster.get_configmap(flags_ns, "checkout")["data"]["checkout.flagd.json"]


def claimed(file: str, line: int, key: str, where: str, source: str, rollout: int) -> str:
    return (
        f"{file}:{line}: flags.{key}: the flag {key!r} is being published into {where} by rollout "
        f"{rollout} of source {source!r}: {PROBLEM}; {ADVICE}"
    )


def test_a_key_a_rollout_under_way_has_not_written_yet_is_taken_from_its_start(
    repo, make_namespaces, make_source, sync, cluster, people, tmp_path
):
    """shop's rollout waits at its first gate: nothing written, nothing in the catalog. payments, validated
    meanwhile, went out beside it, and shop's promote then published the key a second time (its revision
    was asked while its rollout had not written, and rejected then, or it had written and was not)."""
    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    files = {"flags/checkout.json": flag_set(**{"new-checkout": SWITCH})}
    publish(repo, app_a, flags_ns, files, steps=[{"pause": {}}, {"setWeight": 100}])
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    sync(shop)
    waiting = wait_for(shop, phase="Paused", waiting_for="approval", weight=0)
    assert not PublishedFlag.objects.filter(source=shop).exists(), "nothing written yet"

    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(name=f"payments-{uuid.uuid4().hex[:6]}", url=other.url)
    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    expected = claimed("flags/payments.json", 3, "new-checkout", where, shop.name, waiting.pk)

    result = sync(payments)

    assert (result["outcome"], result["errors"]) == ("rejected", [expected]), result
    assert cluster.get_configmap(flags_ns, "payments") is None
    decisions.rollout_promote(waiting.pk, user=people["approver"])
    wait_for(shop, phase="Completed", of=waiting)
    assert "new-checkout" in cluster.get_configmap(flags_ns, "checkout")["data"]["checkout.flagd.json"]
    owned = rejection("flags/payments.json", 3, "new-checkout", where, shop.name)
    assert sync(payments)["errors"] == [owned], "the catalog took over from the claim"


def test_of_two_sources_starting_one_key_at_once_the_second_rollout_does_not_start(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch, tmp_path
):
    """payments validated its revision before shop's rollout existed; shop's rollout then started. Each
    check had passed, and both went out: the claim is asked again as a rollout starts, under one lock."""
    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    other = GitRepo(tmp_path / "payments")
    commit = publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(name=f"payments-{uuid.uuid4().hex[:6]}", url=other.url)
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(**{"new-checkout": SWITCH})})
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")

    with HeldPass(monkeypatch, payments, before="_chosen") as held:
        assert sync(shop)["outcome"] == "applied", "shop's rollout starts while payments' pass is held"
    assert held.error is None, held.error

    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    shops = Rollout.objects.get(source=shop).pk
    assert held.result.outcome == "rejected", held.result
    assert held.result.errors == [
        claimed("flags/payments.json", 3, "new-checkout", where, shop.name, shops)
    ] or (held.result.errors == [rejection("flags/payments.json", 3, "new-checkout", where, shop.name)])
    assert Revision.objects.get(source=payments, commit=commit).outcome == Revision.Outcome.REJECTED
    assert not Rollout.objects.filter(source=payments).exists()
    assert cluster.get_configmap(flags_ns, "payments") is None


def shop_under_way_then_a_new_key(repo, make_source, sync, app: str, flags_ns: str):
    """shop's rollout of a flag set, waiting at its first gate; then a commit that brings a new key
    ("new-checkout"), not yet synced: (shop, the rollout under way, the new commit)."""
    gate = [{"pause": {}}, {"setWeight": 100}]
    publish(repo, app, flags_ns, {"flags/checkout.json": flag_set(banner=BANNER)}, steps=gate)
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    sync(shop)
    under_way = wait_for(shop, phase="Paused", waiting_for="approval")
    files = {"flags/checkout.json": flag_set(banner=BANNER, **{"new-checkout": SWITCH})}
    return shop, under_way, publish(repo, app, flags_ns, files, steps=gate, message="a new key")


def test_a_head_whose_key_was_taken_meanwhile_does_not_supersede_the_rollout_under_way(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch, tmp_path
):
    """shop's new commit brings a key, validated while no other source had it; payments' rollout then
    claimed it. shop's rollout under way (of its commit before) goes on as it was, as under any bad
    commit: it was rolled back for a head that then started no rollout."""
    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    shop, under_way, head = shop_under_way_then_a_new_key(repo, make_source, sync, app_a, flags_ns)
    other = GitRepo(tmp_path / "payments")
    gate = [{"pause": {}}, {"setWeight": 100}]
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})}, steps=gate)
    payments = make_source(name=f"payments-{uuid.uuid4().hex[:6]}", url=other.url)

    with HeldPass(monkeypatch, shop, before="_chosen") as held:
        sync(payments)
        claiming = wait_for(payments, phase="Paused", waiting_for="approval")
    assert held.error is None, held.error

    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    expected = claimed("flags/checkout.json", 11, "new-checkout", where, payments.name, claiming.pk)
    assert (held.result.outcome, held.result.errors) == ("rejected", [expected]), held.result
    assert Revision.objects.get(source=shop, commit=head).outcome == Revision.Outcome.REJECTED
    assert Rollout.objects.get(pk=under_way.pk).phase == "Paused", "the rollout under way goes on"
    assert Rollout.objects.filter(source=shop).count() == 1


def test_a_key_the_head_brings_is_claimed_while_the_rollout_it_supersedes_rolls_back(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch, tmp_path
):
    """shop's new commit brings a key, and its rollout under way (of the commit before) is rolled back
    first. payments, validated during that rollback, used to start the key: shop's head was then rejected
    after the rollback, its rollout under way rolled back for nothing. The rollout rolled back claims the
    head's keys from before its rollback; once it ended, the head's own rollout claims them."""
    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    shop, under_way, head = shop_under_way_then_a_new_key(repo, make_source, sync, app_a, flags_ns)
    own_claims = Rollout.objects.get(pk=under_way.pk).flag_claims
    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(name=f"payments-{uuid.uuid4().hex[:6]}", url=other.url)

    with HeldPass(monkeypatch, shop, before="rollout_rollback", within=lifecycle) as held:
        result = sync(payments)
    assert held.error is None, held.error

    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    expected = claimed("flags/payments.json", 3, "new-checkout", where, shop.name, under_way.pk)
    assert (result["outcome"], result["errors"]) == ("rejected", [expected]), result
    assert not Rollout.objects.filter(source=payments).exists()
    assert cluster.get_configmap(flags_ns, "payments") is None
    superseded = Rollout.objects.get(pk=under_way.pk)
    assert (superseded.phase, superseded.flag_claims) == ("Superseded", own_claims), "its own claims again"
    assert Revision.objects.get(source=shop, commit=head).outcome == Revision.Outcome.VALID
    heads = Rollout.objects.get(source=shop, revision__commit=head)
    assert heads.phase == "Paused", "the head's rollout started, at its gate"
    assert {key for group in heads.flag_claims for _, key in group["keys"]} == {"banner", "new-checkout"}


def test_a_worker_that_dies_once_the_heads_keys_are_claimed_leaves_the_rollout_decided_for_rollback(
    repo, make_namespaces, make_source, sync, cluster, monkeypatch
):
    """The head's keys are claimed by the rollout under way with the decision to roll it back, in one
    transaction. Claimed alone, a worker that died before the decision left that rollout running, and
    holding keys it never publishes, whenever it was not superseded after all (a queue, a branch moved
    back). The next pass rolls it back, then starts the head's."""
    from gitops import reconcile

    app_a, flags_ns = make_namespaces("a", "flags")
    shop, under_way, head = shop_under_way_then_a_new_key(repo, make_source, sync, app_a, flags_ns)

    def dies(*args, **kwargs):
        raise SystemExit("the worker died before its rollback")

    monkeypatch.setattr(lifecycle, "rollout_rollback", dies)
    with pytest.raises(SystemExit):
        reconcile.source_sync(shop.pk)
    monkeypatch.undo()

    decided = Rollout.objects.get(pk=under_way.pk)
    assert (decided.abort_requested_by, decided.rollback_phase) == ("sluice", "Superseded")
    claimed_keys = {key for group in decided.flag_claims for _, key in group["keys"]}
    assert claimed_keys == {"banner", "new-checkout"}
    sync(shop)
    assert Rollout.objects.get(pk=under_way.pk).phase == "Superseded"
    assert Rollout.objects.get(source=shop, revision__commit=head).phase == "Paused"


def test_two_rollout_starts_that_claim_one_key_wait_for_each_other(
    repo, make_namespaces, make_source, sync, cluster, tmp_path
):
    """shop's rollout start holds the claims lock, its claim not yet committed (invisible to any other
    session); payments validated its revision meanwhile, and its rollout start waits for the lock. Once
    shop's commits, payments' start sees the claim and starts nothing. Without the lock neither would
    have waited, nor seen the other's claim."""
    import threading

    from django.db import connection, transaction

    from gitops.fetch.revisions import revision_desired_state, revision_fetch
    from gitops.locks import FLAG_KEYS_LOCK
    from gitops.rollout.lifecycle import rollout_start
    from tests.workers import poll

    app_a, app_b, flags_ns = make_namespaces("a", "b", "flags")
    publish(repo, app_a, flags_ns, {"flags/checkout.json": flag_set(**{"new-checkout": SWITCH})})
    shop = make_source(name=f"shop-{uuid.uuid4().hex[:6]}")
    other = GitRepo(tmp_path / "payments")
    publish(other, app_b, flags_ns, {"flags/payments.json": flag_set(**{"new-checkout": SWITCH})})
    payments = make_source(name=f"payments-{uuid.uuid4().hex[:6]}", url=other.url)
    held, go_on, started = threading.Event(), threading.Event(), []

    def start_shops_rollout_and_hold() -> None:
        try:
            head, _ = revision_fetch(shop)
            with transaction.atomic():
                started.append(rollout_start(shop, head, revision_desired_state(shop, head), actor="test"))
                held.set()
                assert go_on.wait(timeout=60)
        finally:
            connection.close()

    holder = threading.Thread(target=start_shops_rollout_and_hold)
    holder.start()
    assert held.wait(timeout=60), "shop's rollout start to hold the lock"
    answers: list[dict] = []
    syncing = threading.Thread(target=lambda: answers.append(sync(payments)))
    syncing.start()

    def payments_waits() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = %s",
                [FLAG_KEYS_LOCK],
            )
            return cursor.fetchone()[0] == 1

    poll(payments_waits, timeout=60, interval=0.05, what="payments' rollout start to wait for the lock")
    go_on.set()
    holder.join(timeout=60)
    syncing.join(timeout=120)

    where = f"{settings.SLUICE_CLUSTER_NAME}/{flags_ns}"
    claim = claimed("flags/payments.json", 3, "new-checkout", where, shop.name, started[0].pk)
    assert answers and (answers[0]["outcome"], answers[0]["errors"]) == ("rejected", [claim]), answers
    assert not Rollout.objects.filter(source=payments).exists()
