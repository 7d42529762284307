"""Every log line about a reconcile names the source, commit and rollout."""

import io
import json
import logging

import pytest

from gitops import reconcile
from gitops.logs import ContextFilter, JsonFormatter
from tests.gitrepo import configmap, policy

pytestmark = pytest.mark.django_db(transaction=True)


def test_reconcile_lines_carry_source_commit_and_rollout(repo, make_namespaces, make_source):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    commit = repo.commit()
    source = make_source()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    gitops_logger = logging.getLogger("gitops")
    gitops_logger.addHandler(handler)
    gitops_logger.setLevel(logging.INFO)
    try:
        reconcile.source_sync(source.pk)
    finally:
        gitops_logger.removeHandler(handler)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    reconciled = [line for line in lines if line["message"].startswith("reconciled")]
    assert reconciled, lines
    assert reconciled[0]["source"] == source.name
    assert reconciled[0]["commit"] == commit
    assert reconciled[0]["rollout"].isdigit()
    assert all(line.get("source") == source.name for line in lines), "every line of the run names its source"
