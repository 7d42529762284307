"""How pages word the consumers of a wave and the consumer map of a source (dashboard.consumers)."""

import pytest

from dashboard.consumers import configmap_readers, consumer_lines, consumers_by_target
from dashboard.templatetags.sluice import seconds_label
from gitops.consumers.workloads import Health


def state(name: str, health: str, detail: str, *, namespace: str = "team-a", **extra) -> dict:
    return {
        "kind": "Deployment",
        "namespace": namespace,
        "name": name,
        "restarted": True,
        "restartable": True,
        "health": health,
        "detail": detail,
        **extra,
    }


@pytest.mark.parametrize(
    ("stored", "text", "message"),
    [
        (state("web", "healthy", "3/3 available"), "web 3/3 available", ""),
        (state("worker", "progressing", "updating 1/2"), "worker updating 1/2", ""),
        (
            state(
                "api", "failed", 'ProgressDeadlineExceeded: ReplicaSet "api-7d" has timed out progressing.'
            ),
            "api failed: ProgressDeadlineExceeded",
            'ReplicaSet "api-7d" has timed out progressing.',
        ),
        (state("gone", "failed", "deleted"), "gone failed: deleted", ""),
        (state("db", "healthy", "3/3 ready", kind="StatefulSet"), "db 3/3 ready", ""),
        # Just after a step restarted it, before the gate's first look.
        (state("new", "progressing", ""), "new waiting for its controller", ""),
    ],
)
def test_a_consumer_is_worded_as_the_issue_words_it(stored, text, message):
    (line,) = consumer_lines([stored])
    assert line.text == text
    assert line.failure_message == message


def test_consumers_are_grouped_per_target_namespace_in_order():
    states = [
        state("worker", "progressing", "updating 1/2", namespace="team-b"),
        state("web", "healthy", "2/2 available", namespace="team-b"),
        state("web", "healthy", "2/2 available", namespace="team-a", kind="StatefulSet"),
        state("pinned", "healthy", "1/1 available", namespace="team-a", restarted=False, restartable=False),
    ]
    groups = consumers_by_target(states)
    assert [g.namespace for g in groups] == ["team-a", "team-b"]
    assert [(line.kind, line.name) for line in groups[0].lines] == [
        ("Deployment", "pinned"),
        ("StatefulSet", "web"),
    ]
    assert [line.name for line in groups[1].lines] == ["web", "worker"]
    assert (groups[0].healthy, groups[1].healthy) == (2, 1)
    pinned = groups[0].lines[0]
    assert (pinned.restarted, pinned.restartable) == (False, False)


def test_odd_stored_states_never_break_a_page():
    lines = consumer_lines([{"name": "web", "health": "exploded"}, "not a mapping", {}])
    assert [(line.name, line.health) for line in lines] == [
        ("", Health.PROGRESSING),
        ("web", Health.PROGRESSING),
    ]


def test_the_consumer_map_is_turned_around_per_configmap():
    readers = configmap_readers(
        {
            "team-a/Deployment/web": ["app", "nginx"],
            "team-a/StatefulSet/db": ["app"],
            "team-b/DaemonSet/agent": ["app"],
            "team-a/Pod/stray": ["app"],  # not a workload kind Sluice restarts
            "no-slashes": ["app"],
            "team-a/Deployment/odd": "app",  # not a list
        }
    )
    assert [(r.namespace, r.configmap, [(w.kind, w.name) for w in r.readers]) for r in readers] == [
        ("team-a", "app", [("Deployment", "web"), ("StatefulSet", "db")]),
        ("team-a", "nginx", [("Deployment", "web")]),
        ("team-b", "app", [("DaemonSet", "agent")]),
    ]
    assert configmap_readers({}) == []


@pytest.mark.parametrize(
    ("seconds", "label"), [(300, "5m"), (90, "90s"), (3600, "1h"), (5400, "90m"), (0, "0s")]
)
def test_durations_read_as_sluice_yaml_writes_them(seconds, label):
    assert seconds_label(seconds) == label


def test_consumers_and_readers_are_told_apart_by_cluster():
    states = [
        {**state("web", "healthy", "2/2 available", namespace="shop"), "cluster": "member-1"},
        {**state("web", "progressing", "updating 1/2", namespace="shop"), "cluster": "default"},
    ]
    groups = consumers_by_target(states)
    assert [(g.cluster, g.namespace, g.healthy) for g in groups] == [
        ("default", "shop", 0),
        ("member-1", "shop", 1),
    ]

    readers = configmap_readers({"shop/Deployment/web": ["app"], "member-1/shop/Deployment/web": ["app"]})
    assert [(r.cluster, r.namespace, r.configmap) for r in readers] == [
        ("", "shop", "app"),
        ("member-1", "shop", "app"),
    ]
