"""Argo Rollouts' Rollouts as consumers of a ConfigMap, with Argo's own controller on the real control plane.

The stack runs Argo Rollouts' controller (built from its release) against the default cluster: a Rollout
Sluice restarts gets a new ReplicaSet from Argo, kube-controller-manager makes its pods and kwok makes
them Ready, and Argo reports the phase Sluice's gate waits for. Before, a Rollout that read a changed
ConfigMap was neither restarted nor waited for: its pods kept the old configuration.
"""

from __future__ import annotations

import pytest

from gitops.models import Change
from tests.rollouts import rollout_of, wait_for
from tests.workers import poll
from tests.workloads import IMAGE

from .test_consumers import diff, start

pytestmark = pytest.mark.django_db(transaction=True)

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "rollouts"
CONFIG_HASH = "sluice.dev/config-hash"


@pytest.fixture(scope="session")
def custom_api(kube_client):
    from kubernetes import client

    return client.CustomObjectsApi(kube_client())


def argo_rollout(name: str, steps: list[dict]) -> dict:
    """A canary Rollout of two replicas whose pods read the ConfigMap ``app`` through envFrom."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": IMAGE, "envFrom": [{"configMapRef": {"name": "app"}}]}
                    ],
                    "terminationGracePeriodSeconds": 0,
                },
            },
            "strategy": {"canary": {"steps": steps}},
        },
    }


def referring_rollout(apps_api, custom_api, namespace: str, steps: list[dict]) -> None:
    """The Deployment ``web`` (two replicas reading ``app`` through envFrom) and the Rollout ``canary``
    that runs its template (``spec.workloadRef``) with these canary steps."""
    from .test_consumers import POD_SPECS, deployment

    apps_api.create_namespaced_deployment(namespace, deployment("web", POD_SPECS["by-envfrom"], replicas=2))
    referring = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": "canary"},
        "spec": {
            "replicas": 2,
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "strategy": {"canary": {"steps": steps}},
        },
    }
    custom_api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, referring)


def read(custom_api, namespace: str, name: str) -> dict:
    return custom_api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def start_pass(source) -> None:
    """Queues a pass without waiting for it: while Argo pauses, its gate holds the pass for a whole slice
    (30 s), and the test goes on meanwhile."""
    from gitops.tasks import sync_source

    sync_source.delay(source.pk)


def restored(cluster, namespace: str) -> bool:
    return cluster.get_configmap(namespace, "app")["data"] == {"V": "1"}


def wait_for_phase(custom_api, namespace: str, name: str, phase: str, *, timeout: float = 60) -> dict:
    """The Rollout once Argo reports ``phase`` for its newest generation."""

    def reached() -> dict | None:
        body = read(custom_api, namespace, name)
        status = body.get("status") or {}
        observed = str(status.get("observedGeneration", "")) == str(body["metadata"]["generation"])
        return body if observed and status.get("phase") == phase else None

    return poll(reached, timeout=timeout, interval=0.1, what=f"Argo to report rollout/{name} {phase}")


def test_a_rollout_that_reads_a_changed_configmap_is_restarted_and_gated_until_argo_reports_it_healthy(
    repo, make_namespaces, make_source, sync, custom_api
):
    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}])
    custom_api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, argo_rollout("web", [{"setWeight": 50}])
    )
    before = wait_for_phase(custom_api, namespace, "web", "Healthy")
    repo.commit("v2")
    assert f"  restart rollout {namespace}/web  (reads app)" in diff(source)

    sync(source, timeout=180)

    done = wait_for(source, phase="Completed", timeout=180)
    after = wait_for_phase(custom_api, namespace, "web", "Healthy", timeout=5)  # the gate waited for it
    assert after["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH]
    assert after["status"]["currentPodHash"] != before["status"]["currentPodHash"], "Argo made new pods"
    assert after["status"]["stableRS"] == after["status"]["currentPodHash"], "and promoted them"
    assert [(s["kind"], s["name"], s["health"]) for s in done.consumer_states] == [
        ("Rollout", "web", "healthy")
    ]
    restarts = Change.objects.filter(source=source, action="restart")
    assert [(c.kind, c.namespace, c.name) for c in restarts] == [("Rollout", namespace, "web")]


def test_an_abort_in_argo_fails_sluices_wave_and_both_roll_back(
    repo, make_namespaces, make_source, sync, custom_api, cluster
):
    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}])
    custom_api.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, argo_rollout("web", [{"setWeight": 50}, {"pause": {}}])
    )
    stable = wait_for_phase(custom_api, namespace, "web", "Healthy")["status"]["stableRS"]
    repo.commit("v2")
    start_pass(source)
    # Argo runs its own canary inside Sluice's wave: at its pause step, Sluice's gate waits and says why.
    wait_for_phase(custom_api, namespace, "web", "Paused")
    poll(
        lambda: any(
            "paused (Argo Rollouts)" in s.get("detail", "")
            for s in (rollout_of(source).consumer_states or ())
        ),
        timeout=60,
        what="the gate to report Argo's pause",
    )

    # What `kubectl argo rollouts abort` sends.
    custom_api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "web", {"status": {"abort": True}}
    )

    failed = wait_for(source, phase="Failed", timeout=120)
    assert "Degraded" in failed.message
    poll(lambda: restored(cluster, namespace), timeout=60, what="the ConfigMap to be restored")
    # Unstamped, its template is the stable one again: Argo goes back to it as healthy, no new pods made.
    healthy = wait_for_phase(custom_api, namespace, "web", "Healthy", timeout=120)
    assert CONFIG_HASH not in (healthy["spec"]["template"]["metadata"].get("annotations") or {})
    assert healthy["status"]["stableRS"] == healthy["status"]["currentPodHash"] == stable

    def actions() -> list[str]:
        changes = Change.objects.filter(source=source, kind="Rollout").order_by("id")
        return list(changes.values_list("action", flat=True))

    poll(lambda: actions() == ["restart", "rollback"], timeout=30, what="the restart and its rollback logged")


def test_a_rollout_that_refers_to_a_stamped_deployment_holds_the_wave_until_argo_is_done_with_it(
    repo, make_namespaces, make_source, sync, custom_api, apps_api, cluster, people
):
    """``spec.workloadRef``: the Deployment is stamped, and the Rollout that runs its template is waited
    for. Before, only the Deployment was: the gate opened while Argo's canary had not even started, and
    an abort in Argo never failed the wave."""
    from django.urls import reverse

    from .test_consumers_ui import viewer_client

    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}])
    referring_rollout(apps_api, custom_api, namespace, [{"setWeight": 50}, {"pause": {}}])
    stable = wait_for_phase(custom_api, namespace, "canary", "Healthy")["status"]["stableRS"]
    repo.commit("v2")
    planned = diff(source)
    assert f"  restart deployment {namespace}/web  (reads app)" in planned
    assert f" wait for rollout {namespace}/canary  (reads app)" in planned

    start_pass(source)
    wait_for_phase(custom_api, namespace, "canary", "Paused")
    poll(
        lambda: any(
            s["kind"] == "Rollout" and "paused (Argo Rollouts)" in s.get("detail", "")
            for s in (rollout_of(source).consumer_states or ())
        ),
        timeout=60,
        what="the gate to report Argo's pause",
    )
    waiting = rollout_of(source)
    assert waiting.phase == "Paused", "the wave waits for Argo's canary"
    (state,) = [s for s in waiting.consumer_states if s["kind"] == "Rollout"]
    assert (state["name"], state["restartable"], state["refers_to"]) == ("canary", False, "web")
    page = (
        viewer_client(people["viewer"]).get(reverse("dashboard:rollout", args=[waiting.pk])).content.decode()
    )
    canary = page.split('data-name="canary"', 1)[1].split("</li>", 1)[0]
    assert "runs deployment/web's template" in canary and "pinned" not in canary

    custom_api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "canary", {"status": {"abort": True}}
    )

    failed = wait_for(source, phase="Failed", timeout=120)
    assert "rollout/canary" in failed.message and "Degraded" in failed.message
    poll(lambda: restored(cluster, namespace), timeout=60, what="the ConfigMap to be restored")
    # Argo's controller takes the stable ReplicaSet back at its own pace: 10 to 20 s alone, and past 60 s
    # once in a fresh clone's CI under load (2026-12-07), though Sluice's part was done.
    healthy = wait_for_phase(custom_api, namespace, "canary", "Healthy", timeout=120)
    assert healthy["status"]["stableRS"] == healthy["status"]["currentPodHash"] == stable
    web = apps_api.read_namespaced_deployment("web", namespace)
    assert CONFIG_HASH not in (web.spec.template.metadata.annotations or {}), "the stamp is taken back"


def test_a_rollout_argo_holds_invalid_fails_the_wave_at_once_not_at_its_health_timeout(
    repo, make_namespaces, make_source, sync, custom_api, apps_api, cluster
):
    """A Rollout that refers to a stamped Deployment, with a spec Argo refuses (``InvalidSpec``): Argo
    takes in no generation of the Deployment, so the gate waited for one until the wave's healthTimeout
    (2 minutes here) and failed with a timeout. Argo's condition now fails the wave at once, saying why."""
    import time

    (namespace,) = make_namespaces("a")
    source = start(repo, make_source, sync, [namespace], steps=[{"setWeight": 100}])
    referring_rollout(apps_api, custom_api, namespace, [{"setWeight": 150}])  # Argo's limit is 100

    def invalid() -> bool:
        conditions = (read(custom_api, namespace, "canary").get("status") or {}).get("conditions") or ()
        return any(c["type"] == "InvalidSpec" and c["status"] == "True" for c in conditions)

    poll(invalid, timeout=60, what="Argo to hold rollout/canary invalid")
    repo.commit("v2")

    started = time.monotonic()
    sync(source, timeout=180)
    failed = wait_for(source, phase="Failed", timeout=60)
    assert time.monotonic() - started < 60, "failed at once, not at the 2-minute healthTimeout"
    assert "rollout/canary" in failed.message and "InvalidSpec" in failed.message
    assert "SetWeight needs to be between 0 and 100" in failed.message
    poll(lambda: restored(cluster, namespace), timeout=60, what="the ConfigMap to be restored")
    web = apps_api.read_namespaced_deployment("web", namespace)
    assert CONFIG_HASH not in (web.spec.template.metadata.annotations or {}), "the stamp is taken back"
