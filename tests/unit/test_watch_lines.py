"""How a watch's stream is cut into events, and when it waits to gather them (``client._lines``).

The stream is a real socket pair: what the connection holds unread is what the kernel holds, as for a
watch's TLS connection (tests/integration/test_live_cache.py reads real watches through it). The
response around it is the least urllib3's has that ``_lines`` uses: ``stream()`` and ``connection``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gitops.cluster import client

GATHER = 0.025


@dataclass
class Connection:
    sock: socket.socket | None


class Response:
    """Chunks as urllib3 streams them: one ``recv`` each, from the reading end of a socket pair."""

    def __init__(self, reader: socket.socket | None, chunks: list[bytes] | None = None) -> None:
        self.connection = Connection(reader)
        self.chunks = chunks  # given, with no socket to read them from

    def stream(self, amt: None, decode_content: bool) -> Iterator[bytes]:
        if self.chunks is not None:
            yield from self.chunks
            return
        assert self.connection.sock is not None
        while chunk := self.connection.sock.recv(4096):
            yield chunk


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader, writer = socket.socketpair()
    yield reader, writer
    reader.close()
    writer.close()


@pytest.fixture
def pauses(monkeypatch) -> list[float]:
    taken: list[float] = []
    monkeypatch.setattr(client.time, "sleep", taken.append)
    return taken


def test_events_come_out_whole_and_in_order_however_the_chunks_cut_them(pauses):
    chunks = [b'{"a":1}\n{"b"', b":2}\n", b"\n", b'{"c":3}\n{"d":4}\n', b'{"e"', b":5}", b"\n"]

    lines = list(client._lines(Response(None, chunks), gather_seconds=GATHER))

    assert lines == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}', b'{"e":5}']
    assert pauses == [], "a stream whose connection cannot be asked is never held up"


def test_a_watch_waits_once_it_has_told_all_that_arrived_and_not_while_more_is_waiting(pair, monkeypatch):
    reader, writer = pair
    pauses: list[float] = []

    def pause(seconds: float) -> None:  # the next event arrives while the watch waits
        pauses.append(seconds)
        writer.sendall(b'{"n":3}\n')

    monkeypatch.setattr(client.time, "sleep", pause)
    writer.sendall(b'{"n":1}\n')
    lines = client._lines(Response(reader), gather_seconds=GATHER)

    assert next(lines) == b'{"n":1}'
    writer.sendall(b'{"n":2}\n')  # arrives while the first is being told
    assert next(lines) == b'{"n":2}'
    assert pauses == [], "the second event was waiting: read on at once"

    assert next(lines) == b'{"n":3}'
    assert pauses == [GATHER], "after the second, nothing had arrived: wait to gather what comes"
    writer.shutdown(socket.SHUT_WR)
    assert list(lines) == []
    assert pauses == [GATHER], "the end of the stream is there to read: no wait for it"


def test_without_gathering_a_watch_never_waits(pair, pauses):
    reader, writer = pair
    writer.sendall(b'{"n":1}\n')
    writer.shutdown(socket.SHUT_WR)

    assert list(client._lines(Response(reader))) == [b'{"n":1}']
    assert pauses == []


def test_a_connection_that_cannot_be_asked_never_holds_a_stream_up(pair):
    reader, _ = pair
    assert client._nothing_arrived(Response(reader)), "an empty socket: nothing arrived"
    reader.close()
    assert not client._nothing_arrived(Response(reader)), "closed: the next read tells"
    assert not client._nothing_arrived(Response(None))
    assert not client._nothing_arrived(object())


def test_a_connection_that_is_not_a_socket_is_never_waited_on(pair):
    """TLS inside TLS (urllib3's SSLTransport, through an HTTPS proxy) keeps decrypted bytes of its
    own, which polling its socket cannot see: never wait on it."""
    reader, _ = pair

    class Tunnel:
        def fileno(self) -> int:
            return reader.fileno()

    response = Response(None)
    response.connection = Connection(Tunnel())  # type: ignore[arg-type]
    assert not client._nothing_arrived(response)
