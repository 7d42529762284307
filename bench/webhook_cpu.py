"""CPU per push webhook in the web process: through gunicorn as bench/fleet.py runs it, and in process.

A burst of pushes spends the web's CPU on every delivery (bench/fleet.py pushes: 1,000 webhooks, about
a seventh of the machine's CPU). This measures one delivery's cost on its own, on the embedded stack
with a fresh database and a Redis database of its own (its queued syncs are thrown away):

  - through gunicorn (2 workers x 8 threads, gthread, as bench/fleet.py starts it), each POST on a new
    connection as a Git host sends them: the server's CPU per webhook, and per POST to an unknown URL
    (Django's 404, through the same middleware) as the peer: the floor any request pays there;
  - in process: Django's handler (middleware, view) and ``webhook_receive`` alone, CPU per call.

Every delivery is signed and accepted (202); all go to one source, whose first push queues its sync
and the rest find it queued, as most of a burst's do. PostgreSQL's and Redis's CPU are not counted;
the gunicorn figures include its arbiter's.

Usage: python bench/webhook_cpu.py [--webhooks 600]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reconcile import ROOT, Bench, bench_environment, cpu_seconds, process_tree

WARM = 50


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Deliveries:
    """Signed push deliveries to one source, each with its own delivery id and commit."""

    def __init__(self, name: str, secret: str) -> None:
        self.name, self.secret, self.count = name, secret, 0

    def next(self) -> tuple[bytes, dict[str, str]]:
        self.count += 1
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "before": "0" * 40,
                "after": f"{self.count:040x}",
                "repository": self.name,
            }
        ).encode()
        return body, {
            "Content-Type": "application/json",
            "X-Sluice-Event": "push",
            "X-Sluice-Delivery": str(uuid.uuid4()),
            "X-Sluice-Signature": "sha256="
            + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest(),
        }


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 - ours
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own server
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def cpu_per_call(call: Callable[[], Any], count: int, measure: Callable[[], float]) -> tuple[float, set[Any]]:
    """Milliseconds of ``measure``'s CPU per call, over ``count`` calls after a warm-up; what they answered."""
    for _ in range(WARM):
        call()
    before = measure()
    answers = {call() for _ in range(count)}
    return 1000 * (measure() - before) / count, answers


def through_gunicorn(env: dict[str, str], deliveries: Deliveries, count: int) -> dict[str, float]:
    port = free_port()
    server = ["--workers", "2", "--threads", "8", "--worker-class", "gthread", "--preload"]
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", *server, "sluice.wsgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                post(f"{base}/webhooks/git/{deliveries.name}", *deliveries.next())
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the server is starting: nothing to poll but its port
        server_cpu = lambda: cpu_seconds(process_tree(web.pid))  # noqa: E731
        webhook, answers = cpu_per_call(
            lambda: post(f"{base}/webhooks/git/{deliveries.name}", *deliveries.next()), count, server_cpu
        )
        assert answers == {202}, answers
        unknown, answers = cpu_per_call(
            lambda: post(f"{base}/no-such-page/", *deliveries.next()), count, server_cpu
        )
        assert answers == {404}, answers
    finally:
        web.terminate()
        web.wait(timeout=30)
    return {"webhook": webhook, "404": unknown}


def in_process(deliveries: Deliveries, count: int) -> dict[str, float]:
    from django.core.handlers.wsgi import WSGIHandler

    from gitops.intake import receive

    handler = WSGIHandler()

    def through_django() -> str:
        body, headers = deliveries.next()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": f"/webhooks/git/{deliveries.name}",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "HTTP_HOST": "127.0.0.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": headers["Content-Type"],
            **{f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()},
        }
        status: list[str] = []
        response = handler(environ, lambda line, _headers: status.append(line))
        b"".join(response)
        response.close()
        return status[0]

    def receive_only() -> int:
        body, headers = deliveries.next()
        return receive.webhook_receive(deliveries.name, headers, body).status

    django, answers = cpu_per_call(through_django, count, time.thread_time)
    assert answers == {"202 Accepted"}, answers
    alone, answers = cpu_per_call(receive_only, count, time.thread_time)
    assert answers == {202}, answers
    return {"django": django, "receive": alone}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--webhooks", type=int, default=600)
    args = parser.parse_args()
    with bench_environment() as (stack_env, workdir):
        redis = stack_env["REDIS_URL"].rsplit("/", 1)[0] + "/7"  # its queued syncs go nowhere a worker reads
        env = {
            **stack_env,
            "REDIS_URL": redis,
            "CELERY_BROKER_URL": redis,
            "CELERY_RESULT_BACKEND": redis,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            # Plain http on 127.0.0.1, as bench/fleet.py serves it: without it (a shell without DEBUG,
            # `env -i`), every POST was redirected to https and the bench stopped at its first one.
            "SLUICE_ALLOW_HTTP": "1",
            "SLUICE_PREPARED_CHECK": "0",  # as deployed: a test shell's check would compile everything twice
            "SLUICE_DATA_DIR": str(workdir / "data"),
        }
        os.environ.update(env)
        Bench(env, workdir).setup_django()
        from gitops import source_admin
        from gitops.intake import webhook_secrets

        source = source_admin.source_add(
            name="webhook-bench",
            url="file:///nowhere/repo.git",
            allowed_namespaces=["webhook-bench"],
            poll_interval=timedelta(hours=1),
        )
        deliveries = Deliveries(source.name, webhook_secrets.webhook_secret_rotate(source))
        try:
            served = through_gunicorn(env, deliveries, args.webhooks)
            local = in_process(deliveries, args.webhooks)
        finally:
            import redis as redis_client

            redis_client.Redis.from_url(redis).flushdb()
    print(
        f"through gunicorn, CPU per request: webhook {served['webhook']:.2f} ms, a 404 {served['404']:.2f} ms"
        f" (the peer: {served['webhook'] / served['404']:.2f}x)"
    )
    print(
        f"in process, CPU per call: Django's handler {local['django']:.2f} ms, webhook_receive {local['receive']:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
