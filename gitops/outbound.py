"""HTTP calls Sluice makes to URLs it was given: analysis checks, notifications, and the look at where a
Git server that refused a fetch with a redirect points (``redirect_of``, which uses no proxy).

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
import time
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


class _Call:
    """One call's deadline and what it opened, so that ``_within`` can stop it there: each socket is
    recorded before it connects, each connect waits only the time left, and none starts after the
    deadline (before 2026-12-07, a slow DNS answer, or a first address that did not answer, moved the
    connect past the deadline: the request went out after Sluice had called it unanswered)."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.expired = False
        self.connections: list[http.client.HTTPConnection] = []
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def create_connection(
        self, address: tuple[str, int], timeout: float, source_address: Any = None, **_: Any
    ) -> socket.socket:
        """``socket.create_connection`` within the deadline: each address in turn, as it does."""
        host, port = address
        failure: OSError = OSError(f"no address for {host}")
        for family, kind, protocol, _name, target in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, protocol)
            with self._lock:
                # The DNS answer or an earlier address took the time (asked of the clock too: ``expire``
                # runs a moment after the deadline, and a connect of a millisecond would still go out).
                if self.expired or time.monotonic() >= self.deadline:
                    sock.close()
                    raise TimeoutError("the deadline passed before the connection")
                self.sockets.append(sock)
            try:
                sock.settimeout(max(min(timeout, self.deadline - time.monotonic()), 0.001))
                if source_address:
                    sock.bind(source_address)
                sock.connect(target)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            sock.settimeout(timeout)  # each read; the deadline shuts the socket whatever is left
            return sock
        raise failure

    def expire(self) -> None:
        """Nothing more starts, and what is open is shut: a read or TLS handshake under way ends."""
        with self._lock:
            self.expired = True
            opened = [connection.sock for connection in self.connections] + list(self.sockets)
        for sock in opened:
            _shut(sock)


# The calling thread's ``_Call``, read by the connections its ``_send`` opens.
_CALL = threading.local()


class _Tracked:
    """Records each connection in the calling ``post``'s ``_Call`` as it starts to connect, and connects
    through it."""

    def connect(self) -> None:
        # Before it connects: a TLS handshake or a proxy's answer trickled inside connect() is shut too.
        call = getattr(_CALL, "call", None)
        if call is not None:
            call.connections.append(self)
            self._create_connection = call.create_connection
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
# ``redirect_of`` sends a source's own credentials: straight to its Git server, never through a proxy of
# the environment, which git (curl) may not have used for that host (curl ignores HTTP_PROXY and reads
# CIDRs in no_proxy; urllib does neither), and which would read an http:// source's token.
_DIRECT_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _NoRedirects, _HTTPHandler, _HTTPSHandler
)


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
    answer = _within(request, timeout, opener=_DIRECT_OPENER)
    return answer.location if 300 <= answer.status < 400 else ""


def _within(
    request: urllib.request.Request, timeout: float, *, opener: urllib.request.OpenerDirector = _OPENER
) -> Answer:
    """``request``'s answer, given up on at ``timeout`` for the whole call."""
    timeout = min(max(timeout, 0.1), MAX_TIMEOUT_SECONDS)
    answers: list[Answer] = []
    call = _Call(timeout)

    def run() -> None:
        _CALL.call = call
        answers.append(_send(opener, request, timeout))

    caller = threading.Thread(target=run, name="outbound", daemon=True)
    caller.start()
    try:
        caller.join(timeout)
    finally:
        # A server that trickles its answer (a byte per read timeout) would keep the thread, its socket
        # and a file descriptor for days, one more each retry: its connection is shut at the deadline, or
        # when the task's own time limit interrupts the wait. The answer is decided first: the shut call
        # ends with an answer of its own ("cannot reach"), too late.
        answered = bool(answers)
        if not answered:
            call.expire()
    return answers[0] if answered else Answer(0, f"no answer within {timeout:g}s")


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):  # closed meanwhile, or handed to TLS: the call ended on its own
            sock.shutdown(socket.SHUT_RDWR)


def _send(opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float) -> Answer:
    try:
        with opener.open(request, timeout=timeout) as response:
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
