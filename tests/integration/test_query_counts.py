"""Hot paths issue a number of queries that does not grow with the number of objects.

Deterministic guards, not timings: a query inside a per-object loop (an
inventory upsert per intent once made 2,000 applies take minutes) shows up
here as a count that differs between a small and a larger repository.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.gitrepo import configmap, policy

pytestmark = pytest.mark.django_db(transaction=True)

SMALL, LARGE = 4, 40


def _queries(action) -> tuple[int, object]:
    with CaptureQueriesContext(connection) as captured:
        result = action()
    return len(captured.captured_queries), result


def _repository(repo, namespaces: list[str], count: int, revision: str = "1") -> None:
    repo.write_all({"sluice.yaml": policy(namespaces, prune=True)})
    for index in range(count):
        repo.write(f"configmaps/cm-{index:03d}.yaml", configmap(f"cm-{index:03d}", {"REVISION": revision}))
    repo.commit(f"{count} objects, revision {revision}")


def _counts(tmp_path_factory, make_namespaces, settings, count: int) -> dict[str, int]:
    from gitops import reconcile, source_admin
    from tests.gitrepo import GitRepo

    repo = GitRepo(tmp_path_factory.mktemp(f"repo-{count}"))
    namespaces = make_namespaces("a", "b")
    _repository(repo, namespaces, count)
    settings.SLUICE_DATA_DIR = tmp_path_factory.mktemp(f"data-{count}")
    source = source_admin.source_add(name=f"count-{count}", url=repo.url, allowed_namespaces=["t*"])

    counts: dict[str, int] = {}
    counts["cold apply"], result = _queries(lambda: reconcile.source_sync(source.pk))
    assert result.outcome == "applied", result
    assert result.summary["create"] == 2 * count
    counts["no-op"], result = _queries(lambda: reconcile.source_sync(source.pk))
    assert result.outcome == "unchanged", result

    _repository(repo, namespaces, count, revision="2")
    counts["update every object"], result = _queries(lambda: reconcile.source_sync(source.pk))
    assert result.summary["update"] == 2 * count, result

    repo.remove("configmaps")
    repo.commit("prune everything")
    counts["prune every object"], result = _queries(lambda: reconcile.source_sync(source.pk))
    assert result.summary["delete"] == 2 * count, result
    return counts


def test_reconcile_query_counts_do_not_grow_with_the_number_of_objects(
    tmp_path_factory, make_namespaces, settings
):
    small = _counts(tmp_path_factory, make_namespaces, settings, SMALL)
    large = _counts(tmp_path_factory, make_namespaces, settings, LARGE)
    assert large == small, f"queries with {SMALL} objects: {small}; with {LARGE}: {large}"
    # And they stay small in absolute terms.
    assert max(small.values()) <= 60, small


def _cluster_counts(tmp_path_factory, cluster_for, settings, clusters: list[str]) -> dict[str, int]:
    """The same repository's query counts when it targets ``clusters`` (the default one is ``local``)."""
    import uuid

    from gitops import reconcile, source_admin
    from tests.gitrepo import GitRepo

    label = f"{len(clusters)}c"
    repo = GitRepo(tmp_path_factory.mktemp(f"repo-{label}"))
    namespaces = [f"t{uuid.uuid4().hex[:6]}-{suffix}" for suffix in ("a", "b")]
    for cluster in clusters:
        for namespace in namespaces:
            cluster_for("local" if cluster == "default" else cluster).create_namespace(namespace)
    targets = [{"cluster": cluster, "namespaces": namespaces} for cluster in clusters]
    repo.write_all({"sluice.yaml": {"targets": targets, "prune": True}})
    for index in range(SMALL):
        repo.write(f"configmaps/cm-{index:03d}.yaml", configmap(f"cm-{index:03d}", {"REVISION": "1"}))
    repo.commit("objects")
    settings.SLUICE_DATA_DIR = tmp_path_factory.mktemp(f"data-{label}")
    source = source_admin.source_add(name=f"count-{label}", url=repo.url, allowed_namespaces=["*/t*"])
    counts: dict[str, int] = {}
    counts["cold apply"], result = _queries(lambda: reconcile.source_sync(source.pk))
    assert result.summary["create"] == 2 * SMALL * len(clusters), result
    counts["no-op"], result = _queries(lambda: reconcile.source_sync(source.pk))
    assert result.outcome == "unchanged", result
    for index in range(SMALL):
        repo.write(f"configmaps/cm-{index:03d}.yaml", configmap(f"cm-{index:03d}", {"REVISION": "2"}))
    repo.commit("update")
    counts["update every object"], result = _queries(lambda: reconcile.source_sync(source.pk))
    assert result.summary["update"] == 2 * SMALL * len(clusters), result
    return counts


def test_reconcile_query_counts_do_not_grow_with_the_number_of_clusters(
    tmp_path_factory, cluster_for, stack, settings
):
    from gitops import cluster_admin

    for member in ("member-1", "member-2"):
        cluster_admin.cluster_add(name=member, kubeconfig=stack["KUBECONFIG"], context=member)
    one = _cluster_counts(tmp_path_factory, cluster_for, settings, ["default"])
    three = _cluster_counts(tmp_path_factory, cluster_for, settings, ["default", "member-1", "member-2"])
    assert three == one, f"queries with 1 cluster: {one}; with 3: {three}"
