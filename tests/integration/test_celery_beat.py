import subprocess
import sys

from tests.workers import ARTIFACTS, poll


def test_celery_beat_starts_from_the_gitops_app(worker_env, tmp_path):
    log_path = ARTIFACTS / "beat.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "gitops",
                "beat",
                "--loglevel=INFO",
                f"--schedule={tmp_path / 'schedule'}",
            ],
            env=worker_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        poll(
            lambda: b"beat: Starting" in log_path.read_bytes() or beat.poll() is not None,
            timeout=30,
            what="celery beat to start",
        )
        assert beat.poll() is None, log_path.read_text()
    finally:
        beat.terminate()
        beat.wait(timeout=30)
