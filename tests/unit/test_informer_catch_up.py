"""How long each watch of the informer asks for: short while it catches up after a resume or a
failure (nothing is vouched for until its on-time end), the configured length once vouched for.
The cluster is a scripted stand-in for the client's LIST and WATCH calls; the loop is under test
(tests/integration/test_live_cache.py runs it against the real apiserver)."""

from __future__ import annotations

import threading
from typing import Any

from gitops.cluster.informer import CATCH_UP_WATCH_SECONDS, ConfigMapInformer, WatchOptions
from gitops.errors import TemporaryError

WATCH_SECONDS = 10


class ScriptedCluster:
    """Answers each watch with the next scripted outcome: "ok" ends on time, "fail" raises."""

    def __init__(self, outcomes: list[str], stop: threading.Event) -> None:
        self.outcomes, self.stop = outcomes, stop
        self.calls: list[tuple[str, Any]] = []

    def list_configmap_page(self, namespace: str, **options: Any) -> tuple[list[Any], str, str]:
        self.calls.append(("list", None))
        return [], "100", ""

    def watch_configmaps(self, namespace: str, **options: Any) -> Any:
        self.calls.append(("watch", options["timeout_seconds"]))
        outcome = self.outcomes.pop(0)
        if not self.outcomes:
            self.stop.set()
        if outcome == "fail":
            raise TemporaryError("connection reset")
        return iter(())


class Sink:
    def __init__(self) -> None:
        self.told: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.told.append(name)


def watches(outcomes: list[str], *, resume_from: str) -> list[tuple[str, Any]]:
    stop = threading.Event()
    cluster = ScriptedCluster(outcomes, stop)
    informer = ConfigMapInformer(
        lambda: cluster,  # type: ignore[arg-type, return-value]
        "",
        Sink(),
        WatchOptions(label_selector="", watch_seconds=WATCH_SECONDS),
        stop=stop,
        resume_from=resume_from,
    )
    informer._failed = lambda exc, failures: failures + 1  # type: ignore[method-assign]  # no back-off wait
    informer.run()
    return cluster.calls


def test_a_resumed_informer_catches_up_with_a_short_watch_then_watches_for_the_configured_length():
    assert watches(["ok", "ok"], resume_from="42") == [
        ("watch", CATCH_UP_WATCH_SECONDS),
        ("watch", WATCH_SECONDS),
    ]


def test_a_listed_informer_is_vouched_for_at_once_and_never_shortens_its_watch():
    assert watches(["ok", "ok"], resume_from="") == [
        ("list", None),
        ("watch", WATCH_SECONDS),
        ("watch", WATCH_SECONDS),
    ]


def test_after_a_failed_watch_the_resumed_one_is_short_again():
    assert watches(["ok", "fail", "ok", "ok"], resume_from="") == [
        ("list", None),
        ("watch", WATCH_SECONDS),
        ("watch", WATCH_SECONDS),
        ("watch", CATCH_UP_WATCH_SECONDS),
        ("watch", WATCH_SECONDS),
    ]
