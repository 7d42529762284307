"""A kubeconfig's exec credential plugin answers within a bound, or the cluster is refused: the client
waited on it without one, and a plugin that hung held every pass of the cluster's sources for good."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from gitops.cluster import client as cluster_client


def kubeconfig_running(tmp_path, command: list[str]) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "edge",
                "clusters": [{"name": "edge", "cluster": {"server": "https://127.0.0.1:9"}}],
                "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "plugin"}}],
                "users": [
                    {
                        "name": "plugin",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1",
                                "command": command[0],
                                "args": command[1:],
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
            }
        )
    )
    return str(path)


def test_a_plugin_that_hangs_is_killed_at_its_bound_and_the_cluster_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_client, "EXEC_PLUGIN_SECONDS", 1.0)
    started = time.monotonic()

    # The client logs a plugin's failure and goes on without credentials: add-cluster refuses that, and
    # a worker's requests are refused by the server, a pass's error instead of a pass that never ends.
    with cluster_client.Cluster(kubeconfig_running(tmp_path, ["sleep", "60"])) as loaded:
        assert not loaded.has_credentials

    assert time.monotonic() - started < 10, "the plugin's wait is bounded"


def test_a_wrapper_whose_child_hangs_is_killed_with_it(tmp_path, monkeypatch):
    """Killing the plugin alone left its child holding the output, and the wait went on until it ended."""
    monkeypatch.setattr(cluster_client, "EXEC_PLUGIN_SECONDS", 1.0)
    started = time.monotonic()

    with cluster_client.Cluster(kubeconfig_running(tmp_path, ["sh", "-c", "sleep 30; echo hi"])) as loaded:
        assert not loaded.has_credentials

    assert time.monotonic() - started < 10, "the wrapper and its child are killed together"


def test_a_plugin_that_answers_in_time_gives_its_token(tmp_path):
    answer = (
        '{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",'
        ' "status": {"token": "t0ken-from-the-plugin"}}'
    )
    with cluster_client.Cluster(kubeconfig_running(tmp_path, ["echo", answer])) as loaded:
        assert loaded.has_credentials


def test_a_plugin_gets_the_environment_without_the_workers_own_secrets(tmp_path, monkeypatch, settings):
    """The plugin is a program the kubeconfig chooses: it was handed DATABASE_URL, SECRET_KEY and the
    sources' Git credentials with the rest of the worker's environment. What cloud CLIs read (AWS_PROFILE,
    PATH, HOME) stays, and so does what the kubeconfig's own ``env`` entries set."""
    settings.SLUICE_CREDENTIALS_ENV_PREFIX = "GIT_CRED_"
    for name, value in {
        "DATABASE_URL": "postgres://sluice:hunter2@db/sluice",
        "SECRET_KEY": "s3cret-signing-key",
        "SLUICE_METRICS_TOKEN": "metrics-t0ken",
        "GIT_CRED_SHOP": "ghp_token",
        "AWS_PROFILE": "platform",
    }.items():
        monkeypatch.setenv(name, value)
    seen = tmp_path / "env"
    answer = (
        '{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",'
        ' "status": {"token": "t0ken-from-the-plugin"}}'
    )
    path = kubeconfig_running(tmp_path, ["sh", "-c", f"env > {seen}; echo '{answer}'"])
    config = yaml.safe_load(Path(path).read_text())
    config["users"][0]["user"]["exec"]["env"] = [{"name": "REDIS_URL", "value": "its-own"}]
    Path(path).write_text(yaml.safe_dump(config))

    with cluster_client.Cluster(path) as loaded:
        assert loaded.has_credentials
    names = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert not {"DATABASE_URL", "SECRET_KEY", "SLUICE_METRICS_TOKEN", "GIT_CRED_SHOP"} & names.keys()
    assert names["AWS_PROFILE"] == "platform" and "PATH" in names
    assert names["REDIS_URL"] == "its-own", "what the kubeconfig sets is the plugin's"
