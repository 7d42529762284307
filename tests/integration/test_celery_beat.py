import socket

from tests.probes import deadline_in, expire, probe_passes
from tests.workers import poll, running_beat


def test_celery_beat_starts_from_the_gitops_app(worker_env, tmp_path):
    with running_beat(worker_env, tmp_path / "schedule") as (beat, log_path):
        poll(
            lambda: b"beat: Starting" in log_path.read_bytes() or beat.poll() is not None,
            timeout=30,
            what="celery beat to start",
        )
        assert beat.poll() is None, log_path.read_text()


def test_beats_liveness_probe_passes_while_its_scheduler_turns_and_fails_once_it_stops(worker_env, tmp_path):
    """The probe checked that a process named beat existed: a beat stuck on a broker connection passed it
    (before 2026-12-07). Now each round writes when the next will have written, and the probe reads it."""
    data = tmp_path / "data"
    data.mkdir()
    assert not probe_passes("60-beat.yaml", data), "no heartbeat yet"
    with running_beat({**worker_env, "SLUICE_DATA_DIR": str(data)}, tmp_path / "schedule") as (
        _beat,
        log_path,
    ):
        heartbeat = data / f"beat-{socket.gethostname()}.heartbeat"
        poll(heartbeat.exists, timeout=30, what=f"beat's first round (log: {log_path})")
        # Three of its rounds ahead (the sweep runs every second here), at least a minute.
        assert 55 < deadline_in(heartbeat) <= 61
        expire(heartbeat)
        poll(lambda: probe_passes("60-beat.yaml", data), timeout=30, what="beat's next rounds to write it")
    expire(heartbeat)
    assert not probe_passes("60-beat.yaml", data), "a scheduler that stopped before its next round"
