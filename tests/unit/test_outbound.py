"""Calls to URLs Sluice was given: no redirect followed, no body kept, and a deadline for the whole call."""

from __future__ import annotations

import socket
import threading
import time

from gitops import outbound


def serve(answer) -> str:
    """A loopback server that hands each connection to ``answer(connection)``; returns its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        while True:
            connection, _ = listener.accept()
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/check"


def trickle(connection: socket.socket) -> None:
    connection.recv(65536)
    try:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40:
            connection.sendall(bytes([byte]))
            time.sleep(0.2)  # the server under test trickles; nothing here waits for it
    except OSError:
        pass


def test_a_trickling_server_is_given_up_on_within_the_timeout():
    url = serve(trickle)
    started = time.monotonic()
    answer = outbound.post(url, b"{}", content_type="application/json", timeout=1)
    assert time.monotonic() - started < 2.5
    assert answer.status == 0
    assert "no answer within 1s" in answer.describe(url)


def test_a_url_python_cannot_even_send_is_an_answer_not_a_crash():
    answer = outbound.post("http://127.0.0.1:9/a b", b"{}", content_type="application/json", timeout=1)
    assert answer.status == 0
    assert answer.problem.startswith("cannot reach the server")
