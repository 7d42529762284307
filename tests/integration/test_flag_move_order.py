"""A flag moving from one flag set to another of its namespace, at 100%, on a real apiserver: the set that
gains it is stored before the set that loses it is written (or pruned). A watch of the namespace's
ConfigMaps, from before the step, sees the two writes in that order, and after no event is the flag in
neither set. Before, both went out in one batch, and flagd could read them a moment apart and
serve the flag from neither (the code's default)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from gitops.models import ApplyIntent, Change, Rollout
from gitops.rollout import decisions
from tests.gitrepo import policy
from tests.rollouts import wait_for
from tests.workers import poll

pytestmark = pytest.mark.django_db(transaction=True)

THEME = {"state": "ENABLED", "variants": {"light": "#fff", "dark": "#000"}, "defaultVariant": "light"}
DARK = {**THEME, "defaultVariant": "dark"}
STAYS_IN_A = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
STAYS_IN_B = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off"}
SETS = ("a", "b")
# The worker after a killed one takes the pass over sooner (as in test_crash_and_concurrency).
TAKES_OVER_SOONER = {"SLUICE_PASS_TAKEOVER_SECONDS": "2"}

Event = tuple[str, str, int, frozenset[str]]  # type, flag set, resourceVersion, its flags after the event


def flags_of(obj: dict[str, Any]) -> frozenset[str]:
    name = obj["metadata"]["name"]
    document = json.loads((obj.get("data") or {}).get(f"{name}.flagd.json") or "{}")
    return frozenset(document.get("flags") or {})


def flag_sets_now(cluster, namespace: str) -> tuple[dict[str, frozenset[str]], str]:
    """The flags each of the two sets publishes, and the version a watch of what comes next starts from."""
    items, version, _ = cluster.list_configmap_page(namespace, label_selector="", limit=500)
    return {
        obj["metadata"]["name"]: flags_of(obj) for obj in items if obj["metadata"]["name"] in SETS
    }, version


class WatchedWrites:
    """The two sets' events after ``version``, in the order the apiserver stored them, as a watch started
    now tells them (on a thread: the step runs meanwhile), until b has gained the theme and a lost it,
    or the server ends the watch after ``seconds``. Started before the step, it needs no history."""

    def __init__(self, cluster, namespace: str, version: str, *, seconds: int) -> None:
        self.events: list[Event] = []
        self.error: BaseException | None = None
        self.seconds = seconds
        self.thread = threading.Thread(target=self._watch, args=(cluster, namespace, version), daemon=True)
        self.thread.start()

    def _watch(self, cluster, namespace: str, version: str) -> None:
        try:
            for kind, obj in cluster.watch_configmaps(
                namespace, resource_version=version, label_selector="", timeout_seconds=self.seconds
            ):
                name = (obj.get("metadata") or {}).get("name")
                if kind == "BOOKMARK" or name not in SETS:
                    continue
                flags = frozenset() if kind == "DELETED" else flags_of(obj)
                self.events.append((kind, name, int(obj["metadata"]["resourceVersion"]), flags))
                if both_written(self.events):
                    return
        except BaseException as exc:  # told by ``told``, on the test's thread
            self.error = exc

    def told(self) -> list[Event]:
        self.thread.join(timeout=self.seconds + 10)
        assert not self.thread.is_alive(), "the watch ended"
        if self.error is not None:
            raise self.error
        return list(self.events)


def both_written(events: list[Event]) -> bool:
    """b gained the theme, and a lost it (or is gone)."""
    gained = any(name == "b" and "theme" in flags for _, name, _, flags in events)
    lost = any(name == "a" and "theme" not in flags for _, name, _, flags in events)
    return gained and lost


def assert_gain_then_loss(start: dict[str, frozenset[str]], events: list[Event]) -> None:
    """b's write that adds the theme is stored before a's that takes it away, and after every event one
    of the two sets serves the theme."""
    assert both_written(events), events
    gain = next(version for _, name, version, flags in events if name == "b" and "theme" in flags)
    loss = next(version for _, name, version, flags in events if name == "a" and "theme" not in flags)
    assert gain < loss, f"the set gaining the flag is stored first: {events}"
    serving = dict(start)
    assert "theme" in serving["a"] and "theme" not in serving["b"], start
    for kind, name, version, flags in events:
        serving[name] = flags
        assert any("theme" in held for held in serving.values()), f"in neither after {kind} {name} {version}"


def files(app: str, flags_ns: str, *, moved: bool, a_kept: bool = True, steps: list | None = None) -> dict:
    rollout = {"rollout": {"steps": steps}} if steps else {}
    a_flags = {"stays": STAYS_IN_A} if moved else {"theme": THEME, "stays": STAYS_IN_A}
    b_flags = {"kept": STAYS_IN_B, "theme": DARK} if moved else {"kept": STAYS_IN_B}
    written = {
        "sluice.yaml": policy([app], flags={"namespace": flags_ns}, prune=True, **rollout),
        "flags/b.json": json.dumps({"flags": b_flags}),
    }
    if a_kept:
        written["flags/a.json"] = json.dumps({"flags": a_flags})
    return written


@pytest.mark.parametrize("a_kept", [True, False], ids=["old-set-kept", "old-set-deleted"])
def test_at_100_the_set_gaining_a_moving_flag_is_stored_before_the_one_losing_it(
    a_kept, repo, make_namespaces, make_source, sync, cluster, people
):
    """A canary holds the theme in a.json until 100 (``moved_flags``); the promote to 100 writes b.json
    with it, then a.json without it (kept), or prunes a.json (its file deleted)."""
    app, flags_ns = make_namespaces("app", "flags")
    repo.write_all(files(app, flags_ns, moved=False))
    repo.commit("v1")
    source = make_source()
    assert sync(source)["outcome"] == "applied"
    if not a_kept:
        repo.remove("flags/a.json")
    repo.write_all(files(app, flags_ns, moved=True, a_kept=a_kept, steps=[{"setWeight": 10}, {"pause": {}}]))
    repo.commit("move the theme from a.json to b.json")
    assert sync(source)["outcome"] == "paused"
    start, version = flag_sets_now(cluster, flags_ns)
    watched = WatchedWrites(cluster, flags_ns, version, seconds=90)

    decisions.rollout_promote(Rollout.objects.get(source=source, phase="Paused").pk, user=people["approver"])
    wait_for(source, phase="Completed")

    assert_gain_then_loss(start, watched.told())
    end, _ = flag_sets_now(cluster, flags_ns)
    assert end == ({"a": {"stays"}, "b": {"kept", "theme"}} if a_kept else {"b": {"kept", "theme"}})


def test_a_worker_killed_between_the_two_writes_leaves_the_flag_in_both_and_the_next_pass_finishes_in_order(
    repo, make_namespaces, make_source, start_worker, cluster
):
    """A one-step rollout held between the rounds: b.json holds the theme, a.json still too (flagd serves
    one of the two definitions, never neither); the next pass sends a.json's write alone, after, and
    each write is logged once."""
    from gitops.tasks import sync_source

    app, flags_ns = make_namespaces("app", "flags")
    repo.write_all(files(app, flags_ns, moved=False))
    repo.commit("v1")
    source = make_source()
    queue = f"flag-move-{source.pk}"
    first = start_worker(queues=queue)
    assert sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)["outcome"] == "applied"
    first.kill()
    repo.write_all(files(app, flags_ns, moved=True))
    commit = repo.commit("move the theme from a.json to b.json, at once")
    start, version = flag_sets_now(cluster, flags_ns)
    watched = WatchedWrites(cluster, flags_ns, version, seconds=400)
    doomed = start_worker(
        concurrency=1, queues=queue, env_overrides={"SLUICE_FAILPOINTS": "between-flag-moves=300"}
    )
    sync_source.apply_async((source.pk,), queue=queue)
    intents = ApplyIntent.objects.filter(source=source, commit=commit)
    poll(
        lambda: intents.filter(name="b", status="done").exists(),
        timeout=90,
        what="b.json's write stored and logged, and the pass held before a.json's",
    )
    doomed.kill()

    held, _ = flag_sets_now(cluster, flags_ns)
    assert held == {"a": {"theme", "stays"}, "b": {"kept", "theme"}}, "in both for now, never in neither"
    assert intents.get(name="a").status == "pending"

    start_worker(queues=queue, env_overrides=TAKES_OVER_SOONER)
    result = sync_source.apply_async((source.pk,), queue=queue).get(timeout=180)

    assert result["rollout"]["phase"] == "Completed", result
    assert result["summary"].get("resumed") == 1, result
    assert_gain_then_loss(start, watched.told())
    end, _ = flag_sets_now(cluster, flags_ns)
    assert end == {"a": {"stays"}, "b": {"kept", "theme"}}
    logged = sorted(Change.objects.filter(source=source, commit=commit).values_list("name", flat=True))
    assert logged == ["a", "b"], "each write logged once"
    assert not intents.filter(status="pending").exists()
