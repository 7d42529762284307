"""Server-side applies through libcurl (pycurl): the cold apply's one request per object, made in C.

Through urllib3 and http.client, each apply spent about 0.5 ms of the worker's CPU on Python
building the request, wrapping TLS and parsing the answer's status line and headers (http.client
parses them with the ``email`` package): half of Sluice's CPU per created object, more than all of
its parsing, planning and bookkeeping together. libcurl does the same work in C for about a third
of that (the README's "CPU per object" has the figures).

A transport keeps idle handles, each with its open connection, and lends one to each request: the
apply pool's threads and a short-lived thread alike reuse a kept connection, as they did from
urllib3's pool. The credentials are the client configuration's: its CA file, its client
certificate, and its bearer token, asked for on each request (an exec plugin's token refreshes as
it does for the client's own calls). A configuration this module does not carry over keeps the
client's urllib3 pool: ``Transport.supports`` says which.

A batch (``patch_all``, and ``send_all`` for the DELETEs of a prune or a rollback and a removal's JSON
patches) runs on the calling thread through one libcurl multi handle, many requests in flight at once:
a thread per request cost the worker about a third more CPU per object (handing work to the threads,
waking them, and the GIL passed between 16 of them), measured on a cold apply. Of a success's answer
(the whole object stored) a batch keeps what its caller reads (``success_kept``) until it ends.
The multi handle keeps its connections between batches; its easy handles never serve ``patch``.

A forked child (a Celery pool process) keeps the handles it inherited unused, and makes its own; it
relies on the child ending with ``os._exit``, as billiard's and multiprocessing's children do.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pycurl
from requests.utils import should_bypass_proxies

# libcurl's codes (curl/curl.h) for a name that does not resolve, a connection that could not be
# made, a timeout, and a failed TLS handshake or certificate check.
_NOT_RESOLVED = 6
_NOT_CONNECTED = 7
_TIMED_OUT = 28
_TLS_ERRORS = frozenset({35, 53, 54, 58, 59, 60, 64, 66, 77, 80, 82, 83, 90, 91})
# CURLOPT_CA_CACHE_TIMEOUT (libcurl 7.87), which pycurl does not name: 0 reads the CA file again for
# each new connection, as urllib3 did, so a rotated in-cluster CA is trusted without a restart.
_CA_CACHE_TIMEOUT = 321
# urllib3 here made one more attempt after a failed connect (``configuration.retries = 1``).
_CONNECT_ATTEMPTS = 2
# The longest a batch waits for any of its connections before asking libcurl again (its timers
# included), in seconds.
_MULTI_WAIT = 1.0


class CurlError(OSError):
    """The request got no answer; ``reason`` is short and reads the same for the same failure."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]  # read only for an error (status >= 300)


class _Queue:
    """The requests of a batch not yet sent, drawn one at a time and numbered."""

    def __init__(self, requests: Iterable[tuple[str, bytes]]) -> None:
        self._requests: Iterator[tuple[str, bytes]] | None = iter(requests)
        self._drawn = 0

    def __bool__(self) -> bool:
        return self._requests is not None

    def next(self) -> _Flight | None:
        if self._requests is None:
            return None
        request = next(self._requests, None)
        if request is None:
            self._requests = None
            return None
        self._drawn += 1
        return _Flight(self._drawn - 1, *request)

    def close(self) -> None:
        self._requests = None


@dataclass
class _Flight:
    """One request of a batch on its way: where its answer goes, and what came back so far."""

    index: int
    url: str
    body: bytes
    attempts: int = 1
    received: io.BytesIO = field(default_factory=io.BytesIO)
    header_lines: list[bytes] = field(default_factory=list)


class Transport:
    """PATCH requests (and batches of other writes) to one apiserver, on connections kept open."""

    def __init__(self, configuration: Any, timeout: tuple[float, float]) -> None:
        self._configuration = configuration
        self._timeout = timeout
        self._idle: list[pycurl.Curl] = []
        self._made: list[pycurl.Curl] = []  # idle or lent: what a forked child must not free
        self._lock = threading.Lock()
        self._closed = False
        # ``patch_all``'s: one batch at a time, on handles of its own.
        self._multi: _MultiLoop | None = None
        self._multi_idle: list[pycurl.Curl] = []
        self._multi_lock = threading.Lock()
        _transports.add(self)

    @staticmethod
    def supports(configuration: Any) -> bool:
        """False for what this transport does not carry over, left to urllib3: a proxy (from the
        environment; ``NO_PROXY`` honoured as the client honours it), a TLS server name other than
        the host's, and verification against the system's CAs (no CA file in the kubeconfig)."""
        proxied = bool(configuration.proxy) and not should_bypass_proxies(
            configuration.host, no_proxy=configuration.no_proxy or ""
        )
        system_cas = configuration.verify_ssl and not configuration.ssl_ca_cert
        return not (proxied or configuration.tls_server_name or system_cas)

    def patch(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        handle = self._borrow()
        attempts = 1
        try:
            while True:
                try:
                    return _perform(handle, url, body, headers)
                except pycurl.error as exc:
                    if attempts < _CONNECT_ATTEMPTS and _nothing_sent(handle, exc):
                        attempts += 1
                        continue
                    raise CurlError(_reason(handle, exc)) from exc
        finally:
            self._give_back(handle)

    def patch_all(
        self,
        requests: Iterable[tuple[str, bytes]],
        headers: Mapping[str, str],
        *,
        width: int,
        gives_up: Callable[[Answer | CurlError], bool],
        success_kept: int | None = None,
    ) -> list[Answer | CurlError | None]:
        """PATCHes each (url, body), ``width`` at a time on the calling thread: each one's answer, or
        why it got none, in order. ``requests`` is drawn as requests go out, so a lazy one holds only
        the bodies under way. Once ``gives_up`` is true of a result, no further request is drawn
        (those under way finish): the list ends there. A failed connect with nothing sent is tried
        once more, as ``patch`` does. ``success_kept``: the bytes of a 2xx answer's body kept (all of
        an error's are), for a caller that reads no more of it: an answer holds the whole object."""
        return self.send_all(
            "PATCH", requests, headers, width=width, gives_up=gives_up, success_kept=success_kept
        )

    def send_all(
        self,
        method: str,
        requests: Iterable[tuple[str, bytes]],
        headers: Mapping[str, str],
        *,
        width: int,
        gives_up: Callable[[Answer | CurlError], bool],
        success_kept: int | None = None,
    ) -> list[Answer | CurlError | None]:
        """``patch_all`` with another method (a DELETE's body is its options)."""
        results: list[Answer | CurlError | None] = []
        header_list = [*(f"{name}: {value}" for name, value in headers.items()), "Expect:"]
        waiting = _Queue(requests)
        with self._multi_lock:
            multi = self._multi_loop()
            running: dict[pycurl.Curl, _Flight] = {}
            try:
                while waiting or running:
                    while len(running) < max(1, width) and (flight := waiting.next()) is not None:
                        results.append(None)
                        running[self._send(multi, flight, header_list, method)] = flight
                    for handle, error in multi.finished():
                        flight = running.pop(handle)
                        if error is not None and self._again(multi, handle, flight, error):
                            running[handle] = flight
                            continue
                        self._multi_give_back(handle)
                        result = _result_of(handle, flight, error, success_kept)
                        results[flight.index] = result
                        if gives_up(result):
                            waiting.close()
                    if running:
                        multi.step()
            except pycurl.error as exc:  # libcurl refused to drive the transfers: none is answered
                raise CurlError(f"curl error {_code(exc)}") from exc
            finally:
                for handle in running:  # only when something raised: the transfers are abandoned
                    multi.remove(handle)
                    self._multi_give_back(handle)
                if self._closed:  # closed while this batch ran: its handles close now
                    self._close_multi()
        if self._closed and self._multi_lock.acquire(blocking=False):
            # ``close`` may have come between the check above and the lock's release, and found it
            # held: one of the two always sees the other, so the handles never stay open.
            try:
                self._close_multi()
            finally:
                self._multi_lock.release()
        return results

    def _send(self, multi: _MultiLoop, flight: _Flight, header_list: list[str], method: str) -> pycurl.Curl:
        handle = self._multi_borrow()
        try:
            _prepare(handle, flight, header_list, method)
        except BaseException:
            self._multi_give_back(handle)
            raise
        self._add(multi, handle)
        return handle

    def _add(self, multi: _MultiLoop, handle: pycurl.Curl) -> None:
        """Puts a prepared handle into the batch; one that cannot go in is given back, not lost."""
        try:
            multi.add(handle)
        except BaseException:
            self._multi_give_back(handle)
            raise

    def _again(self, multi: _MultiLoop, handle: pycurl.Curl, flight: _Flight, error: pycurl.error) -> bool:
        """Sends a request again whose connect failed with nothing sent, once (as ``patch`` does)."""
        if flight.attempts >= _CONNECT_ATTEMPTS or not _nothing_sent(handle, error):
            return False
        flight.attempts += 1
        flight.received = io.BytesIO()
        flight.header_lines = []
        _collect_answer(handle, flight)
        self._add(multi, handle)
        return True

    def _multi_loop(self) -> _MultiLoop:
        if self._multi is None:
            self._multi = _MultiLoop()
        return self._multi

    def _multi_borrow(self) -> pycurl.Curl:
        return self._multi_idle.pop() if self._multi_idle else self._made_handle()

    def _multi_give_back(self, handle: pycurl.Curl) -> None:
        handle.setopt(pycurl.POSTFIELDS, b"")  # an idle handle holds no body
        self._multi_idle.append(handle)

    def close(self) -> None:
        """Closes the idle handles and their connections; a lent one closes when it comes back, and a
        batch under way closes its own as it ends (this does not wait for it)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._forget(idle)
        for handle in idle:
            handle.close()
        if self._multi_lock.acquire(blocking=False):
            try:
                self._close_multi()
            finally:
                self._multi_lock.release()

    def _forget(self, closing: list[pycurl.Curl]) -> None:
        """Takes handles about to be closed out of those made; ``_lock`` held."""
        gone = {id(handle) for handle in closing}
        self._made = [handle for handle in self._made if id(handle) not in gone]

    def _close_multi(self) -> None:
        """Closes the batches' handles and their connections; ``_multi_lock`` held."""
        idle, self._multi_idle = self._multi_idle, []
        loop, self._multi = self._multi, None
        with self._lock:
            self._forget(idle)
        for handle in idle:
            handle.close()
        if loop is not None:
            loop.close()

    def _borrow(self) -> pycurl.Curl:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._made_handle()

    def _made_handle(self) -> pycurl.Curl:
        """A new handle, counted among those a forked child must not free."""
        try:
            handle = self._new_handle()
        except (pycurl.error, UnicodeError) as exc:  # a credential file libcurl cannot take
            raise CurlError(f"cannot set up the connection: {type(exc).__name__}") from exc
        with self._lock:
            self._made.append(handle)
        return handle

    def _give_back(self, handle: pycurl.Curl) -> None:
        handle.setopt(pycurl.POSTFIELDS, b"")  # an idle handle holds no body
        with self._lock:
            if not self._closed:
                self._idle.append(handle)
                return
            self._made.remove(handle)
        handle.close()

    def _new_handle(self) -> pycurl.Curl:
        configuration = self._configuration
        handle = pycurl.Curl()
        handle.setopt(pycurl.CUSTOMREQUEST, "PATCH")
        handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        handle.setopt(pycurl.NOSIGNAL, 1)  # many threads: no SIGALRM for name lookups
        handle.setopt(pycurl.NOPROXY, "*")  # a proxied cluster is urllib3's (``supports``)
        if configuration.ssl_ca_cert:
            handle.setopt(pycurl.CAINFO, os.fsencode(configuration.ssl_ca_cert))
            handle.setopt(_CA_CACHE_TIMEOUT, 0)
        if not configuration.verify_ssl:
            handle.setopt(pycurl.SSL_VERIFYPEER, 0)
            handle.setopt(pycurl.SSL_VERIFYHOST, 0)
        elif configuration.assert_hostname is False:
            handle.setopt(pycurl.SSL_VERIFYHOST, 0)
        if configuration.cert_file:
            handle.setopt(pycurl.SSLCERT, os.fsencode(configuration.cert_file))
        if configuration.key_file:
            handle.setopt(pycurl.SSLKEY, os.fsencode(configuration.key_file))
        connect, read = self._timeout
        handle.setopt(pycurl.CONNECTTIMEOUT_MS, max(1, int(connect * 1000)))
        # urllib3's read timeout is the longest silence of the server. libcurl has no such timer
        # (its low-speed check averages over seconds that include the upload, and overshot a 1 s
        # limit eightfold), so an apply gets connect + read seconds in all: an apply's answer is
        # one object, and a server that answers within the read timeout is done well within it.
        handle.setopt(pycurl.TIMEOUT_MS, max(1, int((connect + read) * 1000)))
        return handle


def _perform(handle: pycurl.Curl, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
    received = io.BytesIO()
    header_lines: list[bytes] = []
    handle.setopt(pycurl.URL, url)
    # No "Expect: 100-continue" for a large body: urllib3 never sent one, and a proxy or load
    # balancer that does not answer it would hold each such apply up for a second.
    handle.setopt(pycurl.HTTPHEADER, [*(f"{name}: {value}" for name, value in headers.items()), "Expect:"])
    handle.setopt(pycurl.POSTFIELDS, body)
    handle.setopt(pycurl.WRITEDATA, received)
    handle.setopt(pycurl.HEADERFUNCTION, header_lines.append)
    handle.perform()
    status = int(handle.getinfo(pycurl.RESPONSE_CODE))
    answer = received.getvalue()
    received.close()  # the handle keeps pointing at it until its next request
    return Answer(status, answer, _headers(header_lines) if status >= 300 else {})


def _prepare(handle: pycurl.Curl, flight: _Flight, header_list: list[str], method: str) -> None:
    # Set for each request: a batch's handles serve PATCH and DELETE batches alike.
    handle.setopt(pycurl.CUSTOMREQUEST, method)
    handle.setopt(pycurl.URL, flight.url)
    handle.setopt(pycurl.HTTPHEADER, header_list)
    handle.setopt(pycurl.POSTFIELDS, flight.body)
    _collect_answer(handle, flight)


def _collect_answer(handle: pycurl.Curl, flight: _Flight) -> None:
    """Where the handle puts the answer's body and header lines: the flight's buffers."""
    handle.setopt(pycurl.WRITEDATA, flight.received)
    handle.setopt(pycurl.HEADERFUNCTION, flight.header_lines.append)


class _MultiLoop:
    """A libcurl multi handle driven through its socket and timer callbacks on an epoll set, so that
    no descriptor is out of reach (``select`` and libcurl's fdset stop at 1,024, which a worker with
    many clusters' connections can pass). One batch at a time drives it.

    The epoll set is used directly, not through ``selectors``: libcurl asks to watch each kept
    connection again for every request, and the selector's bookkeeping of those calls cost about 5%
    of a batch's CPU. A connection leaves the set as soon as libcurl stops watching it, before
    libcurl may close it: a socket a forked child shares would otherwise stay in the set, closed.
    """

    def __init__(self) -> None:
        self._multi = pycurl.CurlMulti()
        self._epoll = select.epoll()
        self._watched: dict[int, int] = {}  # descriptor -> the events libcurl asked to watch it for
        self._failure: OSError | None = None  # the epoll set refused a descriptor (in a callback)
        self._deadline: float | None = None  # when libcurl wants to be called for its timers
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)

    def add(self, handle: pycurl.Curl) -> None:
        self._multi.add_handle(handle)  # libcurl asks, through the timer, to be called at once

    def remove(self, handle: pycurl.Curl) -> None:
        with contextlib.suppress(pycurl.error):  # one already out of the multi handle
            self._multi.remove_handle(handle)

    def finished(self) -> list[tuple[pycurl.Curl, pycurl.error | None]]:
        """The transfers done since last asked, taken out of the multi handle: each with its error,
        None for an answer."""
        done: list[tuple[pycurl.Curl, pycurl.error | None]] = []
        while True:
            queued, succeeded, failed = self._multi.info_read()
            done += [(handle, None) for handle in succeeded]
            done += [(handle, pycurl.error(code, message)) for handle, code, message in failed]
            if not queued:
                break
        for handle, _ in done:
            self._multi.remove_handle(handle)
        return done

    def step(self) -> None:
        """Waits until a socket is ready or libcurl's timer is due (at most ``_MULTI_WAIT``), and lets
        libcurl act on it."""
        wait = _MULTI_WAIT
        if self._deadline is not None:
            wait = max(0.0, min(wait, self._deadline - time.monotonic()))
        for fd, mask in self._epoll.poll(wait):
            # As ``selectors`` reads epoll: an error or a hang-up counts as both, of what is watched.
            watched = self._watched.get(fd, 0)
            action = (pycurl.CSELECT_IN if mask & ~select.EPOLLOUT and watched & select.EPOLLIN else 0) | (
                pycurl.CSELECT_OUT if mask & ~select.EPOLLIN and watched & select.EPOLLOUT else 0
            )
            self._multi.socket_action(fd, action)
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._deadline = None  # libcurl sets the next one, if any, during the call
            self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        if self._failure is not None:
            # pycurl swallows what a callback raises: without this, the transfer would wait for its timeout.
            failure, self._failure = self._failure, None
            raise CurlError(f"cannot watch a connection: {failure.strerror or failure}") from failure

    def close(self) -> None:
        self._multi.close()
        self._epoll.close()

    def _on_socket(self, what: int, fd: int, multi: object, socketp: object) -> None:
        events = _WATCHED.get(what, 0)
        watched = self._watched.get(fd)
        try:
            if not events:  # POLL_REMOVE (or nothing to watch): libcurl is done with the socket
                if watched is not None:
                    del self._watched[fd]
                    with contextlib.suppress(OSError):  # closed already: the set dropped it
                        self._epoll.unregister(fd)
            elif watched is None:
                self._epoll.register(fd, events)
                self._watched[fd] = events
            elif watched != events:
                self._epoll.modify(fd, events)
                self._watched[fd] = events
        except OSError as exc:
            self._failure = exc

    def _on_timer(self, timeout_ms: int) -> None:
        self._deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000


# What to watch a socket for, by what libcurl asks.
_WATCHED = {
    pycurl.POLL_IN: select.EPOLLIN,
    pycurl.POLL_OUT: select.EPOLLOUT,
    pycurl.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT,
}


def _result_of(
    handle: pycurl.Curl, flight: _Flight, error: pycurl.error | None, success_kept: int | None = None
) -> Answer | CurlError:
    if error is not None:
        return CurlError(_reason(handle, error))
    status = int(handle.getinfo(pycurl.RESPONSE_CODE))
    if status < 300 and success_kept is not None:
        # Kept until the batch ends, every answer at once: whole, 5,000 released ConfigMaps of 100 KiB
        # held 500 MB of answers nobody reads past their status (or, for an apply, its resourceVersion).
        with flight.received.getbuffer() as received:  # no copy of the whole body first
            return Answer(status, bytes(received[:success_kept]), {})
    body = flight.received.getvalue()
    return Answer(status, body, _headers(flight.header_lines) if status >= 300 else {})


def _code(exc: pycurl.error) -> int:
    """libcurl's error code (CURLE_*) of a failed request."""
    return int(exc.args[0]) if exc.args else 0


def _nothing_sent(handle: pycurl.Curl, exc: pycurl.error) -> bool:
    """A connection that could not be made, or a timeout before the request went out (a handshake
    that stalled): urllib3 tried a failed connect once more, and with nothing sent so can this."""
    return _code(exc) in (_NOT_CONNECTED, _TIMED_OUT) and handle.getinfo(pycurl.REQUEST_SIZE) == 0


def _reason(handle: pycurl.Curl, exc: pycurl.error) -> str:
    """As ``client._network_reason`` words urllib3's failures: "connection refused", "read timed out".
    Never the host or the URL. A timeout is "read" once the request went out, "connect" before it
    (the connect timeout covers the TLS handshake, which urllib3 counts in its read timeout)."""
    code = _code(exc)
    if code == _TIMED_OUT:
        return "read timed out" if handle.getinfo(pycurl.REQUEST_SIZE) > 0 else "connect timed out"
    if code in _TLS_ERRORS:
        return "TLS handshake failed"
    if code == _NOT_RESOLVED:
        return "name or service not known"
    if os_error := handle.getinfo(pycurl.OS_ERRNO):
        return os.strerror(os_error).lower()
    return f"curl error {code}"


def _headers(lines: list[bytes]) -> dict[str, str]:
    """The last answer's headers (a 100 Continue comes before it); a repeated one keeps its last value."""
    headers: dict[str, str] = {}
    for raw in lines:
        line = raw.decode("latin-1").strip()
        if line.startswith("HTTP/"):
            headers = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().title()] = value.strip()
    return headers


# A forked child (a Celery pool process) must not free the handles it inherited, idle or lent to
# a thread that the fork left behind: freeing one ends its TLS session on a socket the parent still
# uses. The child keeps them, unused, for good, and makes its own.
_transports: weakref.WeakSet[Transport] = weakref.WeakSet()
_inherited: list[pycurl.Curl] = []


_inherited_multis: list[_MultiLoop] = []


def _forget_inherited_handles() -> None:
    for transport in list(_transports):
        _inherited.extend(transport._made)
        if transport._multi is not None:  # its connections are the parent's too
            _inherited_multis.append(transport._multi)
        transport._idle, transport._made = [], []
        transport._multi, transport._multi_idle = None, []
        transport._lock, transport._multi_lock = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited_handles)
