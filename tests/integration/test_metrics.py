"""/metrics: what workers did reaches the web process's scrape."""

import re

import pytest
from django.test import Client

from tests.gitrepo import configmap, policy

pytestmark = pytest.mark.django_db(transaction=True)


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_worker_metrics_and_database_gauges_reach_the_scrape(repo, make_namespaces, make_source, sync):
    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    assert sync(source)["outcome"] == "unchanged"
    Client().post(
        f"/webhooks/git/{source.name}",
        data=b"{}",
        content_type="application/json",
        HTTP_X_GITHUB_EVENT="push",
    )

    response = Client().get("/metrics")

    assert response.status_code == 200
    text = response.content.decode()
    assert sample(text, "sluice_reconcile_total", source=source.name, result="applied") == 1
    assert sample(text, "sluice_reconcile_total", source=source.name, result="unchanged") == 1
    assert sample(text, "sluice_git_fetch_duration_seconds_count", source=source.name) == 2
    assert sample(text, "sluice_reconcile_duration_seconds_count", source=source.name) == 2
    assert sample(text, "sluice_rollout_phase", source=source.name, phase="Completed") == 1
    assert sample(text, "sluice_drift_objects", source=source.name) == 0
    assert sample(text, "sluice_webhook_deliveries_total", provider="github", result="rejected") >= 1


def test_a_scrape_reads_each_plans_drift_count_not_the_plan(settings):
    """Every scrape read every source's whole stored plan (up to 500 items and 4 MiB of diffs), only to
    count its drift, which the plan keeps counted. An old plan without the count is still counted."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from gitops.models import Source

    settings.SLUICE_METRICS_TOKEN, settings.SLUICE_METRICS_PUBLIC = "", True
    counted = {"drift_by_cluster": {"default": 2}, "items": [{"diff": "x" * 1000}]}
    Source.objects.create(name="counted", url="file:///x.git", last_plan=counted)
    old = {"items": [{"action": "drift", "cluster": ""}, {"action": "unchanged", "cluster": ""}]}
    Source.objects.create(name="old-plan", url="file:///x.git", last_plan=old)

    with CaptureQueriesContext(connection) as queries:
        text = Client().get("/metrics").content.decode()

    assert sample(text, "sluice_drift_objects", source="counted", cluster="default") == 2
    assert sample(text, "sluice_drift_objects", source="old-plan") == 1
    whole_plans = [q["sql"] for q in queries if '"last_plan" FROM' in q["sql"] or '"last_plan",' in q["sql"]]
    assert len(whole_plans) == 1 and '"id" IN (' in whole_plans[0], whole_plans  # the old plan alone


def test_a_metrics_token_is_required_when_set(settings):
    settings.SLUICE_METRICS_TOKEN = "scrape-token-0123456789"
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-0123456789").status_code == 200


def test_a_deployment_without_a_token_serves_metrics_to_nobody_unless_it_says_they_are_public(settings):
    # /metrics names every source with its phase and drift: strangers learn nothing by default.
    settings.SLUICE_METRICS_TOKEN = ""
    settings.SLUICE_METRICS_PUBLIC = False
    refused = Client().get("/metrics")
    assert refused.status_code == 401
    assert b"SLUICE_METRICS_TOKEN" in refused.content
    settings.SLUICE_METRICS_PUBLIC = True
    assert Client().get("/metrics").status_code == 200


def test_a_worker_that_shares_no_directory_with_the_web_serves_its_own_metrics(
    repo, make_namespaces, make_source, worker_env, tmp_path
):
    """In deploy/kubernetes every pod has its own data directory: the workers' counters never reached
    the web's /metrics, so alerts on reconciles and failed applies stayed silent (before 2026-12-07).
    A worker serves what its processes wrote on SLUICE_WORKER_METRICS_PORT, guarded as the web's is."""
    import shutil
    import socket
    import urllib.error
    import urllib.request
    import uuid

    from gitops.celery import app
    from tests.workers import WorkerProcess, poll

    (namespace,) = make_namespaces("app")
    repo.write_all({"sluice.yaml": policy([namespace]), "configmaps/app.yaml": configmap("app", {"v": "1"})})
    repo.commit()
    source = make_source()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    own = tmp_path / "worker-metrics"
    own.mkdir()
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    overrides = {
        "SLUICE_WORKER_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(own),
        "SLUICE_METRICS_TOKEN": "scrape-me",
    }
    worker = WorkerProcess(worker_env, concurrency=1, queues=queue, env_overrides=overrides).start()
    try:
        kwargs = {"source_id": source.pk, "actor": "sluice", "wait_if_busy": False, "automatic": True}
        app.send_task("gitops.sync_source", kwargs=kwargs, queue=queue, ignore_result=True)

        def scraped() -> str:
            asked = urllib.request.Request(
                f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer scrape-me"}
            )
            with urllib.request.urlopen(asked, timeout=5) as answer:  # noqa: S310 - a loopback URL
                return answer.read().decode()

        poll(
            lambda: sample(scraped(), "sluice_reconcile_total", source=source.name, result="applied") == 1,
            timeout=60,
            what=f"the worker's own scrape to count its reconcile (log: {worker.log_path})",
        )
        assert sample(scraped(), "sluice_git_fetch_duration_seconds_count", source=source.name) == 1
        # Another host's samples in a shared directory (Compose's volume) are its scrape's, not this one's.
        (mine,) = own.glob("counter_*.db")
        shutil.copy(mine, own / "counter_another-host-1.db")
        assert sample(scraped(), "sluice_reconcile_total", source=source.name, result="applied") == 1
        # A caller that connects and says nothing held up every later scrape (one thread served them all).
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            assert sample(scraped(), "sluice_reconcile_total", source=source.name, result="applied") == 1
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert refused.value.code == 401
    finally:
        worker.stop()
    (written,) = {path.name.split("_")[-1] for path in own.glob("counter_*.db")} - {"another-host-1.db"}
    assert written.startswith(socket.gethostname().replace("_", "-") + "-"), "named by host and process"


def test_the_worker_process_that_serves_its_metrics_keeps_its_socket(settings):
    """Celery's solo pool sends worker_process_init in the worker's main process, the one serving: the
    socket was closed there, every scrape refused and the server's thread spun a core."""
    import socket

    from gitops import metrics

    settings.SLUICE_METRICS_PUBLIC = True
    settings.SLUICE_METRICS_TOKEN = ""
    server = metrics.worker_metrics_serve(0)
    try:
        metrics.worker_metrics_forget()  # what worker_process_init runs, here in the serving process
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert connection.recv(64).startswith(b"HTTP/1.0 200")
    finally:
        server.shutdown()
        server.server_close()
