"""Celery tasks. Each is thin: it takes ids, calls a service and returns plain data."""

import os
import socket

from gitops.celery import app


@app.task(name="gitops.ping")
def ping(payload: str) -> dict[str, str | int]:
    """Round-trips through a worker; used by health checks and the smoke tests."""
    return {"payload": payload, "hostname": socket.gethostname(), "pid": os.getpid()}
