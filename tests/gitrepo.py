"""Real Git repositories for tests: a bare "remote" and a working clone that commits and pushes."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import yaml

AUTHOR = ("Ada Lovelace", "ada@example.com")


class GitRepo:
    def __init__(self, root: Path, branch: str = "main", *, object_format: str = "sha1") -> None:
        self.root = root
        self.branch = branch
        self.remote = root / "remote.git"
        self.work = root / "work"
        root.mkdir(parents=True, exist_ok=True)
        init = ("init", "--quiet", f"--object-format={object_format}", f"--initial-branch={branch}")
        self._git(root, *init, "--bare", str(self.remote))
        self._git(root, *init, str(self.work))
        self.git("remote", "add", "origin", str(self.remote))

    @property
    def url(self) -> str:
        return f"file://{self.remote}"

    def _git(self, cwd: Path, *args: str, author: tuple[str, str] = AUTHOR) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": author[0],
            "GIT_AUTHOR_EMAIL": author[1],
            "GIT_COMMITTER_NAME": author[0],
            "GIT_COMMITTER_EMAIL": author[1],
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()

    def git(self, *args: str, author: tuple[str, str] = AUTHOR) -> str:
        return self._git(self.work, *args, author=author)

    def write(self, path: str, content: str | bytes | dict | list) -> None:
        target = self.work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict | list):
            content = yaml.safe_dump(content, sort_keys=False)
        if isinstance(content, str):
            content = content.encode()
        target.write_bytes(content)

    def write_all(self, files: dict[str, str | bytes | dict | list]) -> None:
        for path, content in files.items():
            self.write(path, content)

    def remove(self, path: str) -> None:
        self.git("rm", "--quiet", "-r", path)

    def commit(self, message: str = "change", *, author: tuple[str, str] = AUTHOR, push: bool = True) -> str:
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message, author=author)
        if push:
            self.push()
        return self.head()

    def push(self, *, force: bool = False) -> None:
        self.git(
            "push", "--quiet", *(["--force"] if force else []), "origin", f"HEAD:refs/heads/{self.branch}"
        )

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


def configmap(
    name: str, data: dict[str, str] | None = None, *, namespace: str | None = None, **extra
) -> dict:
    metadata: dict = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    manifest: dict = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    if data is not None:
        manifest["data"] = data
    manifest.update(extra)
    return manifest


def policy(targets: list[str], **extra) -> dict:
    document: dict = {"targets": {"namespaces": targets}}
    document.update(extra)
    return document


class SilentGitServer:
    """Accepts connections and never answers: a git fetch from it hangs until it is killed.

    Each fetch is one connection, so the count says how many times the sync started.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/shop.git"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        # Closing the connections ends the git processes the killed workers left behind.
        self.listener.close()
        for connection in self.connections:
            connection.close()
