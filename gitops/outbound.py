"""HTTP calls Sluice makes to URLs it was given: analysis checks, notifications, and the look at where a
Git server that refused a fetch with a redirect points (``redirect_of``).

Such a URL points wherever its author wanted, so a call follows no redirect
(urllib would follow one to any host, turning a POST into a GET), waits a
bounded time, and keeps nothing of the answer but its status: a body from an
internal address must not reach events, pages, logs or notifications.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import IO, Any

USER_AGENT = "sluice/1"
MAX_TIMEOUT_SECONDS = 30.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        # Returning None makes urllib hand the 3xx back as the answer instead of following it.
        return None


# The connections the calling thread's ``_post`` opened, so that ``post`` can close them at its deadline.
_CALL = threading.local()


class _Tracked:
    """Records each connection in the calling ``post``'s list as it starts to connect."""

    def connect(self) -> None:
        # Before it connects: a TLS handshake or a proxy's answer trickled inside connect() is shut too.
        opened = getattr(_CALL, "connections", None)
        if opened is not None:
            opened.append(self)
        super().connect()  # type: ignore[misc]


class _TrackedHTTP(_Tracked, http.client.HTTPConnection):
    pass


class _TrackedHTTPS(_Tracked, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_TrackedHTTP, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_TrackedHTTPS, req, context=self._context)  # type: ignore[attr-defined]


_OPENER = urllib.request.build_opener(_NoRedirects, _HTTPHandler, _HTTPSHandler)


@dataclass(frozen=True)
class Answer:
    status: int  # 0 when there was no HTTP answer at all
    problem: str = ""  # why there was no answer: a timeout, a refused connection
    location: str = ""  # a redirect's Location header, as sent (never followed)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self, url: str) -> str:
        if self.problem:
            return f"{self.problem} ({url})"
        if 300 <= self.status < 400:
            return f"HTTP {self.status} from {url}: redirects are not followed"
        return f"HTTP {self.status} from {url}"


def post(url: str, body: bytes, *, content_type: str, timeout: float) -> Answer:
    """POSTs ``body``; the answer's status, or why there was none. Never raises for network trouble.

    ``timeout`` bounds the whole call, not each read: a server that trickles its
    answer a byte at a time is given up on all the same.
    """
    if not url.startswith(("http://", "https://")):
        return Answer(0, "not an http:// or https:// URL")
    url = url.partition("#")[0]  # a fragment is the client's, never sent: cut where the check cut it
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url, data=body, method="POST", headers={"Content-Type": content_type, "User-Agent": USER_AGENT}
    )
    return _within(request, timeout)


def redirect_of(url: str, *, headers: dict[str, str], timeout: float) -> str:
    """Where ``url`` redirects a GET (its Location header), never followed; "" for any other answer or
    none. Only ever asked of a URL Sluice was already sending the same request to (a source's own
    repository, with its own credentials)."""
    if not url.startswith(("http://", "https://")):
        return ""
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url.partition("#")[0], method="GET", headers={**headers, "User-Agent": USER_AGENT}
    )
    answer = _within(request, timeout)
    return answer.location if 300 <= answer.status < 400 else ""


def _within(request: urllib.request.Request, timeout: float) -> Answer:
    """``request``'s answer, given up on at ``timeout`` for the whole call."""
    timeout = min(max(timeout, 0.1), MAX_TIMEOUT_SECONDS)
    answers: list[Answer] = []
    opened: list[http.client.HTTPConnection] = []

    def call() -> None:
        _CALL.connections = opened
        answers.append(_send(request, timeout))

    caller = threading.Thread(target=call, name="outbound", daemon=True)
    caller.start()
    caller.join(timeout)
    if answers:
        return answers[0]
    # A server that trickles its answer (a byte per read timeout) would keep the thread, its socket and
    # a file descriptor for days, one more each retry: its connection is shut at the deadline. The
    # answer is decided first: the shut call ends with an answer of its own ("cannot reach"), too late.
    for connection in opened:
        _shut(connection)
    return Answer(0, f"no answer within {timeout:g}s")


def _shut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # closed meanwhile: the call ended on its own
            sock.shutdown(socket.SHUT_RDWR)


def _send(request: urllib.request.Request, timeout: float) -> Answer:
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Answer(int(response.status))
    except urllib.error.HTTPError as exc:
        _close(exc.fp)
        location = exc.headers.get("Location", "") if exc.headers is not None else ""
        return Answer(int(exc.code), location=str(location)[:2000])
    except TimeoutError:
        return Answer(0, f"no answer within {timeout:g}s")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            return Answer(0, f"no answer within {timeout:g}s")
        detail = getattr(reason, "strerror", None) or type(reason).__name__
        return Answer(0, f"cannot reach the server: {detail}")


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        stream.close()
