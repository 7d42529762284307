"""The embedded stack itself: a second, independent stack starts, serves and stops cleanly."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import Stack
from devstack.stack import ROOT, _group_alive

CHECK_DATABASE = (
    "import os, psycopg; print(psycopg.connect(os.environ['DATABASE_URL']).execute('select 1').fetchone()[0])"
)
PARTS = {
    "etcd",
    "redis",
    "postgres",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "kube-apiserver-member-1",
    "kube-controller-manager-member-1",
    "kube-apiserver-member-2",
    "kube-controller-manager-member-2",
    "rollouts-controller",
}


def run_sourced(stack: Stack, commands: str) -> subprocess.CompletedProcess[str]:
    """Runs ``commands`` in bash after `. .stack/env`, with nothing else in the environment."""
    return subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(stack.env_file))} && {commands}"],
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line mentions ``text`` (the stack's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if entry.name.isdigit() and state != "Z" and text in argv:
            found.append(f"{entry.name}: {argv[:200]}")
    return found


# Alone under pytest -n 2: a second stack takes both cores as it starts, past the other session's deadlines.
@pytest.mark.exclusive
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
        assert env["SLUICE_MEMBER_CLUSTERS"] == "member-1,member-2"
        # The suite's worker processes must keep the test settings' SECRET_KEY.
        assert "SECRET_KEY" not in env
        assert set(stack.process_status()) == PARTS

        kubeconfig = json.loads(Path(env["KUBECONFIG"]).read_text())
        assert kubeconfig["current-context"] == "local"
        assert [context["name"] for context in kubeconfig["contexts"]] == ["local", "member-1", "member-2"]
        assert len({cluster["cluster"]["server"] for cluster in kubeconfig["clusters"]}) == 3

        # The env file is what a user sources: kubectl must work through it alone, on every context.
        listed = run_sourced(
            stack,
            "kubectl get ns -o name && kubectl --context member-2 get ns -o name"
            " && kubectl get nodes -o name"
            f" && {sys.executable} -c {shlex.quote(CHECK_DATABASE)}",
        )
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.split()
        assert lines.count("namespace/default") == lines.count("namespace/kube-system") == 2
        assert {"node/sluice-node-1", "node/sluice-node-2"} <= set(lines)
        assert lines[-1] == "1"

        # ... and so must manage.py: no SECRET_KEY "must be set", no other line to add.
        managed = run_sourced(stack, "python manage.py migrate && python manage.py gitops status")
        assert managed.returncode == 0, managed.stdout[-2000:] + managed.stderr[-2000:]

        assert stack.up() == env, "up on a running stack reuses it"
        pids = [process["pid"] for process in stack._state()["processes"].values()]
    finally:
        stack.down()

    assert not any(_group_alive(pid) for pid in pids)
    assert processes_mentioning(str(stack.directory)) == []
    assert not stack.env_file.exists()
    assert not Path(stack.state_file).exists()
