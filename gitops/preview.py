"""What a sync would do, without doing it: fetch, validate and plan; nothing is applied or recorded."""

from __future__ import annotations

from gitops.cluster import get_cluster
from gitops.cluster.live import live_configmaps
from gitops.fetch.revisions import revision_desired_state, revision_fetch
from gitops.models import Revision, Source
from gitops.plan import Plan, plan
from gitops.record.inventory import managed_keys, managed_namespaces


def source_preview(source: Source) -> tuple[Revision, Plan | None]:
    """The branch tip and its plan against the cluster; no plan when the revision is rejected."""
    revision, _ = revision_fetch(source)
    if revision.outcome == Revision.Outcome.REJECTED:
        return revision, None
    desired = revision_desired_state(source, revision)
    if desired is None:
        revision.refresh_from_db()
        return revision, None
    live = live_configmaps(get_cluster(), {*desired.namespaces, *managed_namespaces(source)})
    return revision, plan(
        desired, live, source=source.name, commit=revision.commit, managed=managed_keys(source)
    )
