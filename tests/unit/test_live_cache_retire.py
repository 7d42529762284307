"""A retired namespace's informer is waited for until it has ended, however long its last read takes."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

from gitops import livecache
from gitops.livecache import _Term, _Watch
from tests.workers import poll


def test_a_retired_namespace_stays_retiring_until_its_informer_has_ended(monkeypatch, caplog):
    """The informer of a namespace taken out of the inventory was stopped mid-LIST (a large namespace, a
    slow token). The retirement gave up waiting after a watch's length and dropped the namespace's
    stamps, and a second informer of it could start beside the first, whose LIST then stored its old
    snapshot as fresh. Now the namespace is retiring, and nothing of it dropped, until the first ends."""
    # raising=False: on code without the margin the test fails on what the retirement does, not here.
    monkeypatch.setattr(livecache, "RETIRE_WAIT_MARGIN_SECONDS", 0.01, raising=False)
    listing = threading.Event()  # the LIST under way; set: it returns
    informer = threading.Thread(target=listing.wait, name="informer-team", daemon=True)
    informer.start()
    try:
        _retire_while_listing(caplog, listing, informer)
    finally:
        listing.set()  # a failure must not leave the thread behind


def _retire_while_listing(caplog, listing: threading.Event, informer: threading.Thread) -> None:
    forgotten: list[str] = []
    term = SimpleNamespace(
        _lock=threading.Lock(),
        watches={"team": _Watch(stop=threading.Event(), thread=informer)},
        retiring=set(),
        cache=SimpleNamespace(options=SimpleNamespace(watch_seconds=0)),
        sink=SimpleNamespace(drop=lambda namespace: None),
        over=threading.Event(),
        store=SimpleNamespace(forget=forgotten.append),
    )
    caplog.set_level(logging.WARNING, logger=livecache.__name__)

    _Term._retire(term, "team")  # type: ignore[arg-type]

    def waited_past_the_watchs_length_twice() -> bool:
        return sum("has not ended yet" in record.getMessage() for record in caplog.records) >= 2

    poll(waited_past_the_watchs_length_twice, timeout=10, what="the retirement to wait on")
    assert term.watches == {}
    assert term.retiring == {"team"}, "no second informer of it may start yet"
    assert forgotten == [], "its stamps stay until the informer has ended"

    listing.set()
    poll(lambda: not term.retiring, timeout=10, what="the retirement to end")
    assert forgotten == ["team"]
    assert not informer.is_alive()
