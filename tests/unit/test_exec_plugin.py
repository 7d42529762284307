"""A kubeconfig's exec credential plugin answers within a bound, or the cluster is refused: the client
waited on it without one, and a plugin that hung held every pass of the cluster's sources for good."""

from __future__ import annotations

import time

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
