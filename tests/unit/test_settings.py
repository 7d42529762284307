"""Settings are read from the environment, in a fresh interpreter each time."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PRINT_SETTINGS = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": db["NAME"], "host": db["HOST"], "port": db["PORT"], "user": db["USER"],
    "broker": settings.CELERY_BROKER_URL, "results": settings.CELERY_RESULT_BACKEND,
    "kubeconfig": settings.KUBECONFIG, "hosts": settings.ALLOWED_HOSTS, "debug": settings.DEBUG,
}))
"""


def load_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        env={"DJANGO_SETTINGS_MODULE": "sluice.settings", "PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_everything_comes_from_the_environment():
    loaded = load_settings(
        {
            "SECRET_KEY": "x" * 50,
            "DATABASE_URL": "postgres://app:pw@db.internal:6543/sluice_prod",
            "REDIS_URL": "redis://cache:6379/3",
            "CELERY_BROKER_URL": "redis://broker:6379/1",
            "KUBECONFIG": "/etc/sluice/kubeconfig",
            "ALLOWED_HOSTS": "sluice.example.com, sluice.internal",
        }
    )
    assert loaded.returncode == 0, loaded.stderr
    values = json.loads(loaded.stdout)
    assert values == {
        "engine": "django.db.backends.postgresql",
        "name": "sluice_prod",
        "host": "db.internal",
        "port": 6543,
        "user": "app",
        "broker": "redis://broker:6379/1",
        "results": "redis://cache:6379/3",
        "kubeconfig": "/etc/sluice/kubeconfig",
        "hosts": ["sluice.example.com", "sluice.internal"],
        "debug": False,
    }


def test_the_broker_falls_back_to_redis_url():
    loaded = load_settings({"SECRET_KEY": "x" * 50, "REDIS_URL": "redis://only-redis:6379/0"})
    assert json.loads(loaded.stdout)["broker"] == "redis://only-redis:6379/0"


def test_production_refuses_to_start_without_a_secret_key():
    loaded = load_settings({})
    assert loaded.returncode != 0
    assert "SECRET_KEY must be set" in loaded.stderr


def test_debug_runs_with_a_development_key_and_local_hosts():
    loaded = load_settings({"DEBUG": "1"})
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["hosts"] == ["localhost", "127.0.0.1"]


def test_the_default_clusters_stated_identity_must_be_a_uid():
    """A typo or pasted quotes would refuse the default cluster in every process: it stops them at start."""
    base = {"SECRET_KEY": "x" * 50}
    refused = load_settings({**base, "SLUICE_CLUSTER_IDENTITY": '"7dbeb4f3-7a29-4b0f-bef9-aa2755cd5be5"'})
    assert refused.returncode != 0 and "SLUICE_CLUSTER_IDENTITY is the default cluster's" in refused.stderr
    taken = load_settings({**base, "SLUICE_CLUSTER_IDENTITY": " 7DBEB4F3-7A29-4B0F-BEF9-AA2755CD5BE5 "})
    assert taken.returncode == 0, taken.stderr
