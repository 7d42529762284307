from tests.workers import poll, running_beat


def test_celery_beat_starts_from_the_gitops_app(worker_env, tmp_path):
    with running_beat(worker_env, tmp_path / "schedule") as (beat, log_path):
        poll(
            lambda: b"beat: Starting" in log_path.read_bytes() or beat.poll() is not None,
            timeout=30,
            what="celery beat to start",
        )
        assert beat.poll() is None, log_path.read_text()
