"""docker/ without a Docker engine: the compose file, the entrypoint and the settings it feeds.

There is no `docker compose` plugin on the test machines, so the compose file is
parsed with PyYAML (merge keys and anchors included) and its `${...}`
interpolation is done here the way compose does it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SLUICE_SERVICES = ("web", "worker", "beat", "migrate")
VARIABLES = {
    "SECRET_KEY": "compose-secret",
    "POSTGRES_PASSWORD": "pg-pass",
    "SLUICE_KUBECONFIG": "/home/me/.kube/config",
    "ALLOWED_HOSTS": "sluice.example.com",
}
INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(value: object, variables: dict[str, str]) -> object:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ in every string."""
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name", "op", "arg")
        if variables.get(name):
            return variables[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or "" if op == ":-" else ""

    return INTERPOLATION.sub(substitute, value)


def compose(variables: dict[str, str] = VARIABLES) -> dict:
    return interpolate(yaml.safe_load((DOCKER / "docker-compose.yml").read_text()), variables)


def test_compose_file_has_the_services_and_their_order() -> None:
    services = compose()["services"]
    assert set(services) == {"web", "worker", "beat", "live-cache", "migrate", "postgres", "redis"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat"):
        service = services[name]
        assert service["command"] == [name]
        assert service["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
    for name in SLUICE_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert "/home/me/.kube/config:/etc/sluice/kubeconfig:ro" in services[name]["volumes"]
        assert "sluice-data:/var/lib/sluice" in services[name]["volumes"]
    assert set(compose()["volumes"]) >= {"postgres-data", "sluice-data"}
    live_cache = services["live-cache"]
    assert live_cache["command"] == ["manage", "gitops", "live-cache"]
    assert live_cache["depends_on"] == services["worker"]["depends_on"]
    assert "sluice-data:/var/lib/sluice" in live_cache["volumes"]


def test_compose_healthchecks() -> None:
    services = compose()["services"]
    checks = {name: " ".join(services[name]["healthcheck"]["test"]) for name in services if name != "migrate"}
    assert "pg_isready" in checks["postgres"]
    assert "redis-cli ping" in checks["redis"]
    assert "http://127.0.0.1:8000/healthz" in checks["web"]
    # $$ reaches the container as $, so the shell there expands the container's hostname.
    assert "inspect ping" in checks["worker"]
    assert "celery@$HOSTNAME" in checks["worker"]
    assert "/beat-" in checks["beat"] and ".heartbeat" in checks["beat"]
    assert "/live-cache-" in checks["live-cache"] and ".heartbeat" in checks["live-cache"]


@pytest.mark.parametrize("service", ["beat", "live-cache"])
def test_beat_and_live_cache_healthchecks_read_their_heartbeats(tmp_path, service: str) -> None:
    """Each round writes the time by which the next will have written again (gitops.heartbeat): the
    check passes until it has passed, and fails when it is missing. (It checked that such a process
    existed: the live cache's matched tini's command line too, and never failed.)"""
    check = compose()["services"][service]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "python"]
    env = {**os.environ, "SLUICE_DATA_DIR": str(tmp_path)}

    def healthy() -> bool:
        return subprocess.run([sys.executable, *check[2:]], env=env, check=False, timeout=30).returncode == 0

    assert not healthy(), "no heartbeat yet"
    heartbeat = tmp_path / f"{service}-{socket.gethostname()}.heartbeat"
    heartbeat.write_text(f"{time.time() + 30:.3f}\n")  # the time by which its next round will write
    assert healthy()
    heartbeat.write_text(f"{time.time() - 1:.3f}\n")
    assert not healthy()


@pytest.mark.parametrize("missing", ["SECRET_KEY", "POSTGRES_PASSWORD", "SLUICE_KUBECONFIG"])
def test_compose_requires_secrets_and_kubeconfig(missing: str) -> None:
    with pytest.raises(KeyError, match=missing):
        compose({key: value for key, value in VARIABLES.items() if key != missing})


def test_compose_environment_configures_django() -> None:
    environment = compose()["services"]["web"]["environment"]
    assert all(isinstance(value, str) for value in environment.values())
    script = (
        "import json; from django.conf import settings as s; "
        "print(json.dumps({'db': s.DATABASES['default'], 'redis': s.REDIS_URL, "
        "'broker': s.CELERY_BROKER_URL, 'hosts': s.ALLOWED_HOSTS, 'secret': s.SECRET_KEY, "
        "'kubeconfig': s.KUBECONFIG, 'data': str(s.SLUICE_DATA_DIR), 'debug': s.DEBUG}, default=str))"
    )
    # Only the compose environment: nothing from the developer's shell (.stack/env) leaks in.
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(result.stdout)
    database = loaded["db"]
    assert (database["HOST"], database["PORT"], database["NAME"]) == ("postgres", 5432, "sluice")
    assert (database["USER"], database["PASSWORD"]) == ("sluice", "pg-pass")
    assert loaded["redis"] == "redis://redis:6379/0"
    assert loaded["broker"] == "redis://redis:6379/0"
    assert loaded["hosts"] == ["sluice.example.com", "127.0.0.1"]
    assert loaded["secret"] == "compose-secret"
    assert loaded["kubeconfig"] == "/etc/sluice/kubeconfig"
    assert loaded["data"] == "/var/lib/sluice"
    assert loaded["debug"] is False


# -- the entrypoint ----------------------------------------------------------------

FAKE = """#!/bin/sh
# Prints how it was called, as the entrypoint's exec would run it.
printf '%s' "$(basename "$0")"
for arg in "$@"; do printf ' %s' "$arg"; done
printf '\\n'
"""


@pytest.fixture
def fake_path(tmp_path) -> str:
    """A PATH whose gunicorn, celery and python only print their argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gunicorn", "celery", "python"):
        fake = bin_dir / name
        fake.write_text(FAKE)
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    # The fakes need basename and printf; /usr/bin and /bin have them, not python.
    return f"{bin_dir}:/usr/bin:/bin"


def entrypoint(fake_path: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *args],
        env={"PATH": fake_path, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["web"],
            "gunicorn sluice.wsgi:application --bind 0.0.0.0:8000"
            " --worker-tmp-dir /dev/shm --access-logfile -"
            " --worker-class gthread --threads 8 --timeout 120",
        ),
        (["worker"], "celery -A gitops worker --loglevel INFO --concurrency 2"),
        (
            ["worker", "--concurrency", "4"],
            "celery -A gitops worker --loglevel INFO --concurrency 2 --concurrency 4",  # the last counts
        ),
        (
            ["beat"],
            "celery -A gitops beat --loglevel INFO --schedule /var/lib/sluice/celerybeat-schedule",
        ),
        (["migrate"], "python manage.py migrate --no-input"),
        (["manage", "gitops", "status"], "python manage.py gitops status"),
    ],
)
def test_entrypoint_execs_the_role(fake_path: str, args: list[str], expected: str) -> None:
    result = entrypoint(fake_path, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_entrypoint_puts_the_beat_schedule_in_the_data_dir(fake_path: str) -> None:
    result = entrypoint(fake_path, "beat", SLUICE_DATA_DIR="/data")
    assert result.stdout.strip().endswith("--schedule /data/celerybeat-schedule")


def test_entrypoint_replaces_itself(fake_path: str, tmp_path) -> None:
    # With exec the role's process keeps the entrypoint's PID, so signals reach it.
    (Path(fake_path.partition(":")[0]) / "celery").write_text("#!/bin/sh\necho $$\n")
    result = subprocess.run(
        ["bash", "-c", f"echo $$; exec bash {DOCKER / 'entrypoint.sh'} worker"],
        env={"PATH": fake_path},
        capture_output=True,
        text=True,
        check=True,
    )
    shell_pid, role_pid = result.stdout.split()
    assert shell_pid == role_pid


@pytest.mark.parametrize("args", [["webserver"], [""], []])
def test_entrypoint_refuses_unknown_roles(fake_path: str, args: list[str]) -> None:
    result = entrypoint(fake_path, *args)
    assert result.returncode == 64
    assert "unknown role" in result.stderr
    assert result.stdout == ""


# -- the Dockerfile ----------------------------------------------------------------


def test_dockerfile_builds_in_stages_and_runs_unprivileged() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) == 2
    assert "requirements-dev" not in dockerfile.replace("never requirements-dev.txt", "")
    assert "-r /tmp/requirements/requirements.txt -c /tmp/requirements/constraints.txt" in dockerfile
    assert "COPY --from=builder /opt/venv /opt/venv" in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert "collectstatic --no-input" in dockerfile
    # Run as root at build time, settings made the metrics directory under the data directory root's:
    # a named volume copies it, and the runtime user could record no metric.
    collect = dockerfile[dockerfile.index("RUN SECRET_KEY=collectstatic") :].split("\n\n")[0]
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/" in collect and "/var/lib/sluice" not in collect
    # Every file the Dockerfile copies must survive the .dockerignore next to it.
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", dockerfile, re.MULTILINE):
        for copied in source.split():
            path = copied.rstrip("/")
            assert (ROOT / path).exists(), path
            assert f"!{path}" in ignore.replace("/\n", "\n"), path


def test_docker_compose_config_accepts_the_file_and_names_what_is_missing():
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    required = {"SECRET_KEY": "x" * 50, "POSTGRES_PASSWORD": "pw", "SLUICE_KUBECONFIG": "/etc/kubeconfig"}
    ok = subprocess.run(
        ["docker-compose", "-f", str(DOCKER / "docker-compose.yml"), "config"],
        env={**env, **required},
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert {"web:", "worker:", "beat:", "migrate:", "postgres:", "redis:"} <= set(ok.stdout.split())
    # The web port on this host only unless told: a try-out's plain HTTP reached the whole network.
    web = ok.stdout[ok.stdout.index("  web:") :]
    assert "host_ip: 127.0.0.1" in web or "127.0.0.1:8000:8000" in web, web
    missing = subprocess.run(
        ["docker-compose", "-f", str(DOCKER / "docker-compose.yml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode != 0
    assert "set POSTGRES_PASSWORD" in missing.stderr or "SECRET_KEY" in missing.stderr


def test_constraints_pin_every_requirement_at_its_version() -> None:
    """constraints.txt claims every pin: orjson was missing from it (before 2026-12-07), so an install
    from the constraints alone (a lock file's consumer, a scanner) did not know it."""
    root = Path(__file__).resolve().parents[2]

    def pins(name: str) -> dict[str, str]:
        found = {}
        for text in (root / name).read_text().splitlines():
            line = text.split("#", 1)[0].strip()
            if "==" in line:
                package, version = line.split("==", 1)
                found[re.sub(r"\[.*\]", "", package).lower().replace("_", "-")] = version.strip()
        return found

    constrained = pins("constraints.txt")
    for package, version in pins("requirements.txt").items():
        assert constrained.get(package) == version, (package, version, constrained.get(package))
