from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.gitrepo import GitRepo, configmap, policy


@pytest.fixture(scope="session", autouse=True)
def quick_database_reset() -> Iterator[None]:
    """Transactional tests end with ``tests.dbreset`` instead of Django's flush: the same empty
    tables, for a fraction of the time (see its docstring)."""
    from django.test import TransactionTestCase

    from tests.dbreset import DJANGO_TEARDOWN, quick_teardown

    TransactionTestCase._fixture_teardown = quick_teardown  # type: ignore[method-assign]
    yield
    TransactionTestCase._fixture_teardown = DJANGO_TEARDOWN  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def clusters_answer_anew() -> Iterator[None]:
    """A cluster that failed in one test is asked again by the next: this process remembers such a
    failure for a few seconds (``clients.UNREACHABLE_MEMORY_SECONDS``), and a test that made the
    cluster refuse writes otherwise failed the next ones run in the same process within them."""
    yield
    from gitops.cluster.clients import clients

    clients.forget_unreachable()


@pytest.fixture
def repo(tmp_path) -> GitRepo:
    return GitRepo(tmp_path / "repo")


@pytest.fixture
def make_namespaces(cluster) -> Callable[..., list[str]]:
    """Fresh namespaces with a shared random prefix, so policies can name them."""

    def make(*suffixes: str) -> list[str]:
        # Eight hex digits: two sessions (pytest -n 2) make namespaces on one cluster, and with six
        # a run's two sets of a few hundred prefixes would share one about once in a hundred runs.
        prefix = f"t{uuid.uuid4().hex[:8]}"
        names = [f"{prefix}-{suffix}" for suffix in suffixes]
        for name in names:
            cluster.create_namespace(name)
        return names

    return make


@pytest.fixture
def make_source(repo: GitRepo, settings, tmp_path):
    from gitops import source_admin

    settings.SLUICE_DATA_DIR = tmp_path / "data"

    def make(**options):
        options.setdefault("name", f"src-{uuid.uuid4().hex[:8]}")
        options.setdefault("url", repo.url)
        # Every test namespace starts with "t" (make_namespaces, namespace); kube-system does not.
        options.setdefault("allowed_namespaces", ["t*"])
        return source_admin.source_add(**options)

    return make


@pytest.fixture
def sync(celery_worker):
    """Reconciles a source through the real worker and returns the task's result."""
    from gitops.tasks import sync_source

    def run(source, *, timeout: float = 120, **options) -> dict:
        return sync_source.delay(source.pk, **options).get(timeout=timeout)

    return run


class AnalysisEndpoint:
    """A real HTTP server for analysis steps; answers with ``status`` and records what it was sent."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        endpoint = self
        self.status = 200
        self.received: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                endpoint.received.append(json.loads(self.rfile.read(length) or b"{}"))
                body = b'{"verdict": "%s"}' % (b"pass" if endpoint.status < 300 else b"fail")
                self.send_response(endpoint.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/check"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def analysis_endpoint():
    endpoint = AnalysisEndpoint()
    yield endpoint
    endpoint.close()


@pytest.fixture
def people(db):
    """Users in each role; ``ada`` is an approver who also writes the commits (tests.gitrepo.AUTHOR)."""
    from django.contrib.auth.models import Group, User

    from gitops.access_admin import user_email_verify as verify_email
    from gitops.record.audit import Actor

    def user(name: str, role: str | None, email: str) -> User:
        created = User.objects.create_user(name, email=email, password="x")
        if role:
            created.groups.add(Group.objects.get(name=role))
        verify_email(created, email, actor=Actor.command_line("admin"))
        return User.objects.get(pk=created.pk)  # fresh: permission caches start empty

    return {
        "viewer": user("vera", "viewer", "vera@example.com"),
        "approver": user("otto", "approver", "otto@example.com"),
        "second_approver": user("pia", "approver", "pia@example.com"),
        "author": user("ada", "approver", "ada@example.com"),
    }


@pytest.fixture
def paused_rollout(repo, make_namespaces, make_source, sync, people):
    """A source whose second commit waits for approval at 50%."""
    targets = make_namespaces("canary", "rest")
    repo.write_all({"sluice.yaml": policy(targets), "configmaps/app.yaml": configmap("app", {"V": "1"})})
    repo.commit("v1")
    source = make_source(commit_url_template="https://git.example.com/shop/commit/{commit}")
    sync(source)
    repo.write_all(
        {
            "sluice.yaml": policy(targets, rollout={"steps": [{"setWeight": 50}, {"pause": {}}]}),
            "configmaps/app.yaml": configmap("app", {"V": "2", "GREETING": "hello\nworld\n"}),
        }
    )
    repo.commit("v2: greet")
    sync(source)
    from tests.rollouts import wait_for

    return wait_for(source, phase="Paused", waiting_for="approval")
