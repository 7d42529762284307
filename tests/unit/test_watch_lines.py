"""How a watch's stream is cut into events, and when it waits to gather them (``client._lines``).

The streams are urllib3's own ``HTTPResponse`` over ``http.client``, as the kubernetes client hands a
watch back, reading a real socket pair: so urllib3 reads ahead into its buffer (up to 8 KiB) what
the socket then no longer shows, as on a watch's TLS connection
(tests/integration/test_watch_stream.py reads real watches of the apiserver through it).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from urllib3.response import HTTPResponse

from devstack import pki
from gitops.cluster import client

GATHER = 0.025


@dataclass
class Connection:
    sock: object

    def close(self) -> None:
        """The socket pair is the test's to close."""


def event(number: int, size: int = 600) -> bytes:
    return json.dumps({"type": "ADDED", "object": {"n": number, "pad": "x" * size}}).encode() + b"\n"


def chunked(*events: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in events)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader, writer = socket.socketpair()
    reader.settimeout(10)  # a watch that waits for what never comes fails, not hangs
    yield reader, writer
    reader.close()
    writer.close()


def watch(reader: socket.socket, writer: socket.socket, *events: bytes) -> HTTPResponse:
    """A watch's answer as urllib3 streams it: its head, and ``events`` already sent."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    writer.sendall(head + chunked(*events))
    answer = http.client.HTTPResponse(reader, method="GET")
    answer.begin()
    headers = dict(answer.getheaders())
    return HTTPResponse(
        body=answer, headers=headers, status=200, preload_content=False, original_response=answer
    )


def with_connection(response: HTTPResponse | Chunks, sock: object) -> HTTPResponse | Chunks:
    response._connection = Connection(sock)  # what urllib3 keeps while a streamed answer is read
    return response


@pytest.fixture
def pauses(monkeypatch) -> Callable[[Callable[[], None] | None], list[float]]:
    """The waits ``_lines`` takes; each runs ``during`` (what arrives while the watch waits)."""

    def record(during: Callable[[], None] | None = None) -> list[float]:
        taken: list[float] = []

        def pause(seconds: float) -> None:
            taken.append(seconds)
            if during is not None:
                during()

        monkeypatch.setattr(client.time, "sleep", pause)
        return taken

    return record


class Chunks:
    """A stream of given chunks, and no connection to ask (unless given one)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self._connection: Connection | None = None

    @property
    def connection(self) -> Connection | None:
        return self._connection

    def stream(self, amt: None, decode_content: bool) -> Iterator[bytes]:
        yield from self.chunks


def test_events_come_out_whole_and_in_order_however_the_chunks_cut_them(pauses):
    taken = pauses(None)
    chunks = [b'{"a":1}\n{"b"', b":2}\n", b"\n", b'{"c":3}\n{"d":4}\n', b'{"e"', b":5}", b"\n"]

    lines = list(client._lines(Chunks(chunks), gather_seconds=GATHER))

    assert lines == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}', b'{"e":5}']
    assert taken == [], "a stream whose connection cannot be asked is never held up"


def test_what_arrived_together_is_told_with_one_wait_at_most(pair, pauses):
    """Twelve events sent at once: urllib3 reads most of them ahead, where the socket no longer shows
    them. They are told one after the other, not each after a wait of its own."""
    reader, writer = pair
    taken = pauses(None)
    events = [event(number) for number in range(12)]
    response = with_connection(watch(reader, writer, *events), reader)

    lines = client._lines(response, gather_seconds=GATHER)

    assert [next(lines) for _ in events] == [line.rstrip(b"\n") for line in events]
    assert len(taken) <= 1


def test_a_watch_waits_once_all_that_arrived_is_told_and_again_once_news_arrives(pair, pauses):
    reader, writer = pair
    arriving = [chunked(event(2), event(3)), chunked(event(5)), b"0\r\n\r\n"]
    taken = pauses(lambda: writer.sendall(arriving.pop(0)))  # what comes while the watch waits
    lines = client._lines(with_connection(watch(reader, writer, event(1)), reader), gather_seconds=GATHER)

    assert json.loads(next(lines))["object"]["n"] == 1
    assert json.loads(next(lines))["object"]["n"] == 2
    assert taken == [GATHER], "nothing more had arrived after the first: wait to gather what comes"
    assert json.loads(next(lines))["object"]["n"] == 3
    assert taken == [GATHER], "the third was read ahead with the second: told at once"

    writer.sendall(chunked(event(4)))  # news arrives while the third is being told
    assert json.loads(next(lines))["object"]["n"] == 4
    assert taken == [GATHER], "read on at once while more is waiting"
    assert json.loads(next(lines))["object"]["n"] == 5
    assert taken == [GATHER, GATHER], "news came since the last wait, and all of it is told: wait again"

    later = threading.Timer(0.05, lambda: writer.sendall(chunked(event(6))))
    later.start()  # a read that waits for the network: the next spell of news
    assert json.loads(next(lines))["object"]["n"] == 6
    later.join()
    assert list(lines) == [], "the watch ends on time, while it waits after the sixth"
    assert taken == [GATHER, GATHER, GATHER]


def test_without_gathering_a_watch_never_waits(pair, pauses):
    reader, writer = pair
    taken = pauses(None)
    response = with_connection(watch(reader, writer, event(1), event(2)), reader)
    writer.sendall(b"0\r\n\r\n")

    assert len(list(client._lines(response))) == 2
    assert taken == []


def test_a_connection_that_cannot_be_asked_never_holds_a_stream_up(pair):
    reader, _ = pair

    class Tunnel:
        """TLS inside TLS (urllib3's SSLTransport, through an HTTPS proxy) keeps decrypted bytes of
        its own, which polling its socket cannot see."""

        def fileno(self) -> int:
            return reader.fileno()

    answer = Chunks([])
    assert client._nothing_arrived(with_connection(answer, reader)), "an empty socket: nothing arrived"
    assert not client._nothing_arrived(with_connection(answer, Tunnel()))
    assert not client._nothing_arrived(with_connection(answer, None))
    assert not client._nothing_arrived(object())
    reader.close()
    assert not client._nothing_arrived(with_connection(answer, reader)), "closed: the next read tells"


def test_bytes_decrypted_but_not_yet_read_count_as_arrived(tmp_path):
    """TLS decrypts a record whole: what a read of 8 KiB leaves of it waits in the TLS layer, not in
    the socket, and must not be taken for a quiet connection."""
    serving_pki = pki.generate(tmp_path, ["watch"])
    serving = serving_pki.clusters["watch"].serving
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(serving.cert, serving.key)
    client_side = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_side.load_verify_locations(serving_pki.ca_cert)
    plain_client, plain_server = socket.socketpair()
    plain_client.settimeout(10)
    plain_server.settimeout(10)
    served: list[ssl.SSLSocket] = []

    def serve() -> None:
        server = server_side.wrap_socket(plain_server, server_side=True)
        server.sendall(b"x" * 12_000)  # one record: TLS's are up to 16 KiB
        served.append(server)

    server_thread = threading.Thread(target=serve, daemon=True)
    server_thread.start()
    with client_side.wrap_socket(plain_client, server_hostname="127.0.0.1") as tls:
        server_thread.join(timeout=10)
        assert served, "the TLS handshake did not complete"
        answer = with_connection(Chunks([]), tls)

        assert len(tls.recv(8192)) == 8192
        assert tls.pending() > 0
        assert not client._nothing_arrived(answer), "the rest of the record is there to read"
        received = 8192
        while received < 12_000:
            received += len(tls.recv(8192))
        assert client._nothing_arrived(answer)
    served[0].close()
