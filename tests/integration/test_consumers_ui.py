"""The consumers of a rollout's ConfigMaps on the pages and in the API, through the real pipeline.

Real Deployments on the stack's simulated nodes, a real worker running the rollout with
``consumers: restart``, then what a viewer reads: per target namespace, each consumer
and its state, worded like issue 12, the restart rows of the change log, and no secret.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from gitops.models import Change, Rollout
from gitops.rollout import decisions
from gitops.tasks import sync_source
from tests.gitrepo import configmap, policy
from tests.rollouts import wait_for
from tests.workloads import consumer_deployment, set_unschedulable, wait_for_rollout

pytestmark = pytest.mark.django_db(transaction=True)

# A value a workload carries in its pod template: Sluice reads workloads, and must never show this.
SECRET_VALUE = "hunter2-in-a-pod-template"


def viewer_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def live_partial(client: Client, rollout: Rollout) -> str:
    """What the page's htmx polling fetches every second."""
    response = client.get(reverse("dashboard:rollout", args=[rollout.pk]), headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.content.decode()


def consumers_of(html: str, namespace: str) -> dict[str, str]:
    """name -> the line's text, for the consumers listed under one target namespace."""
    section = html.split(f'data-namespace="{namespace}"', 1)[1].split("</section>", 1)[0]
    return dict(re.findall(r'data-name="([^"]+)".*?<span class="consumer-state">([^<]*)</span>', section))


def v1_then_v2(repo, make_source, sync, targets, *, steps) -> object:
    """v1 of ``app`` applied everywhere (nothing reads it yet); v2 written, not yet committed."""
    rollout = {"consumers": "restart", "healthTimeout": "2m"}
    repo.write_all(
        {"sluice.yaml": policy(targets, rollout=rollout), "configmaps/app.yaml": configmap("app", {"V": "1"})}
    )
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={**rollout, "steps": steps}),
            "configmaps/app.yaml": configmap("app", {"V": "2"}),
        }
    )
    return source


def with_secret_env(manifest: dict) -> dict:
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "DB_PASSWORD", "value": SECRET_VALUE}]
    manifest["metadata"]["annotations"]["example.com/token"] = SECRET_VALUE
    return manifest


def test_the_rollout_page_and_the_api_show_each_consumer_per_target_wave_by_wave(
    repo, make_namespaces, make_source, sync, apps_api, people
):
    targets = make_namespaces("a", "b", "c")
    source = v1_then_v2(repo, make_source, sync, targets, steps=[{"setWeight": 33}, {"pause": {}}])
    for namespace in targets:
        apps_api.create_namespaced_deployment(namespace, with_secret_env(consumer_deployment("web", "app")))
        apps_api.create_namespaced_deployment(
            namespace,
            consumer_deployment("pinned", "app", replicas=1, annotations={"sluice.dev/restart": "false"}),
        )
        apps_api.create_namespaced_deployment(
            namespace, consumer_deployment("unrelated", "other", replicas=1)
        )
    for namespace in targets:
        for name in ("web", "pinned", "unrelated"):
            wait_for_rollout(apps_api, namespace, name)
    repo.commit("v2")

    assert sync(source, timeout=180)["outcome"] == "paused"

    rollout = wait_for(source, phase="Paused", waiting_for="approval")
    client = viewer_client(people["viewer"])
    page = client.get(reverse("dashboard:rollout", args=[rollout.pk])).content.decode()
    assert 'id="consumers"' in page
    assert "consumers: <strong>restart</strong> · healthTimeout 2m" in page
    assert consumers_of(page, targets[0]) == {"pinned": "pinned 1/1 available", "web": "web 2/2 available"}
    for namespace in targets[1:]:
        assert f'data-namespace="{namespace}"' not in page, "later waves are not consumers of this step"
    web = page.split('data-name="web"', 1)[1].split("</li>", 1)[0]
    pinned = page.split('data-name="pinned"', 1)[1].split("</li>", 1)[0]
    assert 'class="badge restarted"' in web and 'class="badge pinned"' not in web
    assert 'class="badge pinned"' in pinned and 'class="badge restarted"' not in pinned
    assert "waiting for 2 consumers to be healthy (1 restarted)" in page
    assert "healthy: deployment/pinned 1/1 available, deployment/web 2/2 available" in page
    # The rollout's targets: the ConfigMap it updated and the Deployment it restarted.
    targets_table = page.split('id="targets"', 1)[1].split("</table>", 1)[0]
    assert f"<td>{targets[0]}</td><td>Deployment</td><td>web</td><td>restart</td>" in targets_table
    assert f"<td>{targets[0]}</td><td>ConfigMap</td><td>app</td><td>update</td>" in targets_table

    api = client.get(f"/api/rollouts/{rollout.pk}").json()
    assert (api["consumers"], api["health_timeout_seconds"]) == ("restart", 120)
    # Counted by the database as the worker logged the update and the restart.
    assert api["targets_total"] == len(api["targets"]) >= 2
    assert sorted(
        (s["namespace"], s["name"], s["restarted"], s["restartable"], s["health"], s["detail"])
        for s in api["consumer_states"]
    ) == [
        (targets[0], "pinned", False, False, "healthy", "1/1 available"),
        (targets[0], "web", True, True, "healthy", "2/2 available"),
    ]
    assert (
        client.get(f"/api/sources/{source.name}").json()["active_rollout"]["consumer_states"]
        == api["consumer_states"]
    )

    # The next wave reaches the two other namespaces; the page shows their consumers.
    decisions.rollout_promote(rollout.pk, user=people["approver"])
    wait_for(source, phase="Completed", timeout=180, of=rollout)
    page = live_partial(client, rollout)
    assert f'data-namespace="{targets[0]}"' not in page
    for namespace in targets[1:]:
        assert consumers_of(page, namespace) == {"pinned": "pinned 1/1 available", "web": "web 2/2 available"}

    changes = client.get(reverse("dashboard:changes"), {"source": source.name, "action": "restart"})
    rows = changes.content.decode().split("<tbody>", 1)[1]
    assert rows.count("<tr><td>") == 3, "web restarted once in each namespace; pinned and unrelated never"
    assert rows.count("<td>Deployment</td>") == 3
    restart = Change.objects.filter(source=source, action="restart").first()
    assert f"config hash <code>none</code> → <code>{restart.after_hash[:12]}</code>" in rows

    everything = [
        client.get(reverse("dashboard:rollout", args=[rollout.pk])),
        client.get(reverse("dashboard:source", args=[source.name])),
        client.get(reverse("dashboard:changes")),
        client.get(f"/api/rollouts/{rollout.pk}"),
        client.get(f"/api/sources/{source.name}"),
        client.get("/api/changes", {"source": source.name, "limit": 200}),
    ]
    for response in everything:
        assert response.status_code == 200
        assert SECRET_VALUE.encode() not in response.content, response.request["PATH_INFO"]


@pytest.mark.exclusive  # cordons the nodes
def test_the_page_shows_a_wave_waiting_for_its_consumers_then_failing(
    repo, make_namespaces, make_source, sync, apps_api, core_api, people, celery_worker
):
    targets = make_namespaces("a", "b")
    source = v1_then_v2(repo, make_source, sync, targets, steps=[{"setWeight": 50}])
    apps_api.create_namespaced_deployment(
        targets[0], consumer_deployment("api", "app", replicas=1, progress_deadline_seconds=5)
    )
    wait_for_rollout(apps_api, targets[0], "api")
    repo.commit("v2")
    client = viewer_client(people["viewer"])
    set_unschedulable(core_api, True)  # the restarted pod finds no node: the real scheduler decides
    try:
        pending = sync_source.delay(source.pk)
        # Generous: on a loaded machine the worker takes a while to reach the wave;
        # the deadline only bounds it.
        waiting = wait_for(source, phase="Paused", waiting_for="consumers", timeout=180)
        page = live_partial(client, waiting)
        deadline = waiting.pause_until.strftime("%H:%M:%S")
        assert 'waiting for <strong id="waiting">consumers</strong> until <time id="health-deadline"' in page
        assert f">{deadline}</time>" in page
        assert 'id="countdown"' not in page, "a health deadline is not a pause that resumes by itself"
        assert re.fullmatch(
            r"api (updating [01]/1|waiting for its controller)", consumers_of(page, targets[0])["api"]
        )

        failed = wait_for(source, phase="Failed", timeout=120)
        pending.get(timeout=120)
    finally:
        set_unschedulable(core_api, False)

    page = live_partial(client, failed)
    assert consumers_of(page, targets[0]) == {"api": "api failed: ProgressDeadlineExceeded"}
    api_line = page.split('data-name="api"', 1)[1].split("</li>", 1)[0]
    assert "has timed out progressing" in api_line, "the controller's message is shown beside the reason"
    assert 'class="badge restarted"' in api_line
    assert "consumers not healthy" in page
    targets_table = page.split('id="targets"', 1)[1].split("</table>", 1)[0]
    assert f"<td>{targets[0]}</td><td>Deployment</td><td>api</td><td>rollback</td>" in targets_table

    log = client.get(reverse("dashboard:changes"), {"source": source.name, "name": "api"}).content.decode()
    rows = log.split("<tbody>", 1)[1]
    assert rows.count("<td>Deployment</td>") == 2
    assert "<td>restart</td>" in rows and "<td>rollback</td>" in rows

    failed_api = client.get(f"/api/rollouts/{failed.pk}").json()
    assert failed_api["targets_total"] == len(failed_api["targets"]), "a rollback names no new object"
    state = failed_api["consumer_states"]
    assert [(s["name"], s["health"], s["restarted"]) for s in state] == [("api", "failed", True)]
    assert state[0]["detail"].startswith("ProgressDeadlineExceeded")
