"""A watch of the real apiserver, read the way the live cache reads it: events told together once
they have arrived (``client._lines``, ``WATCH_GATHER_SECONDS``) are each told once, in order."""

from __future__ import annotations

import threading
import time
from typing import Any

from gitops.cluster import client

LABEL = "sluice-test/watch=stream"
EVENTS = 300


def configmap(namespace: str, index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"cm-{index:03d}",
            "namespace": namespace,
            "labels": {"sluice-test/watch": "stream"},
        },
        "data": {"INDEX": str(index)},
    }


def test_a_burst_of_applies_is_watched_whole_and_in_order_while_the_watch_gathers(
    cluster, make_namespaces, monkeypatch
):
    (namespace,) = make_namespaces("stream")
    _, version, _ = cluster.list_configmap_page(namespace, label_selector=LABEL, limit=1)
    gatherings: list[int] = []  # events told before each wait to gather
    told = 0
    asked = client._nothing_arrived

    def counted(response: Any) -> bool:
        nothing = asked(response)
        if nothing:
            gatherings.append(told)
        return nothing

    monkeypatch.setattr(client, "_nothing_arrived", counted)
    manifests = [(configmap(namespace, index), False) for index in range(EVENTS)]
    applies = threading.Thread(
        target=lambda: cluster.apply_configmaps(manifests, field_manager="sluice-test", width=16), daemon=True
    )
    applies.start()  # the watch starts from the version before them, so it misses none
    seen: list[tuple[str, int]] = []
    deadline = time.monotonic() + 120
    while told < EVENTS and time.monotonic() < deadline:
        # The apiserver may end a watch at any time (it drops a watcher that falls behind, as a loaded
        # run's did after 182 events): the next one resumes from the last version told, as the live
        # cache's informer does, and nothing is told twice or left out across the two.
        for kind, obj in cluster.watch_configmaps(
            namespace, resource_version=version, label_selector=LABEL, timeout_seconds=60
        ):
            version = obj["metadata"]["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            seen.append((obj["metadata"]["name"], int(version)))
            told += 1
            assert kind == "ADDED"
            if told == EVENTS:
                break
    applies.join(timeout=60)

    assert sorted(name for name, _ in seen) == [f"cm-{index:03d}" for index in range(EVENTS)], "each once"
    versions = [version for _, version in seen]
    assert versions == sorted(versions) and len(set(versions)) == EVENTS, "in the order they were stored"
    assert gatherings, "the watch waited to gather once it had told all that had arrived"
    assert len(gatherings) < EVENTS, "and read what came meanwhile together"
