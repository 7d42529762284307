"""The embedded stack itself: a second, independent stack starts, serves and stops cleanly."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

from devstack import Stack
from devstack.stack import _group_alive

CHECK_DATABASE = (
    "import os, psycopg; print(psycopg.connect(os.environ['DATABASE_URL']).execute('select 1').fetchone()[0])"
)


def test_a_separate_stack_starts_exports_its_env_and_stops_without_leftovers(tmp_path):
    stack = Stack(directory=tmp_path / "stack")
    saved = os.environ.pop("DATABASE_URL", None)
    try:
        env = stack.up()
    finally:
        if saved is not None:
            os.environ["DATABASE_URL"] = saved
    try:
        assert stack.is_up()
        assert set(env) >= {"KUBECONFIG", "DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "PATH"}
        assert set(stack.process_status()) == {"etcd", "redis", "postgres", "kube-apiserver"}

        # The env file is what a user sources: kubectl must work through it alone.
        listed = subprocess.run(
            [
                "bash",
                "-c",
                f". {stack.env_file} && kubectl get ns -o name"
                f" && {sys.executable} -c {shlex.quote(CHECK_DATABASE)}",
            ],
            env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        assert "namespace/default" in listed.stdout
        assert "namespace/kube-system" in listed.stdout
        assert listed.stdout.strip().endswith("1")

        assert stack.up() == env, "up on a running stack reuses it"
        pids = [process["pid"] for process in stack._state()["processes"].values()]
    finally:
        stack.down()

    assert not any(_group_alive(pid) for pid in pids)
    assert not stack.env_file.exists()
    assert not Path(stack.state_file).exists()
