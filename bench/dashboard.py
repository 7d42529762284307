"""Dashboard benchmark: pages with a big history.

Fills a fresh database with 500 sources and 1,000,000 change-log rows (with
their intents, revisions and a rollout with a timeline), then times the server
side of each page through Django's test client (no network, no browser):
the overview, the change log (first page, a filtered page, a deep page) and a
rollout page, a source page, and the "Preview a revision" page (empty, and with a worker's answer of
500 changed objects in the result backend). Prints p50 and p95 and the number of queries per page.

Usage: python bench/dashboard.py [--changes 1000000] [--sources 500] [--runs 40]
Target (issue #5): p95 <= 150 ms per page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fill(changes: int, sources: int) -> dict[str, object]:
    """Bulk-loads with INSERT ... SELECT generate_series: the database does the work."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO gitops_source (name, url, branch, path, poll_interval, credentials_ref, allowed_namespaces,
                created_at, next_poll_at, last_commit, last_error, last_plan, commit_url_template,
                webhook_secret_encrypted, sync_queued, notify_urls, analysis_url_prefixes, required_approvals,
                consecutive_failures, consumer_map)
            SELECT 'source-' || lpad(i::text, 3, '0'), 'https://git.example.com/team/repo-' || i || '.git', 'main', '',
                interval '60 seconds', '', '[]', now(), now() + interval '1 day', md5(i::text) || '00000000', '',
                '{}', 'https://git.example.com/team/repo-' || i || '/commit/{commit}', '', false, '[]', '[]', 0, 0,
                '{}'
            FROM generate_series(1, %s) AS i
            """,
            [sources],
        )
        cursor.execute(
            """
            INSERT INTO gitops_revision (source_id, commit, author_name, author_email, message, committed_at,
                fetched_at, outcome, errors, force_pushed_over, summary)
            SELECT s.id, md5(s.id::text || '-' || r) || '00000000', 'Ada', 'ada@example.com',
                'change ' || r, now() - (r || ' minutes')::interval, now() - (r || ' minutes')::interval,
                'applied', '[]', '', '{}'
            FROM gitops_source s, generate_series(1, 20) AS r
            """
        )
        cursor.execute(
            """
            INSERT INTO gitops_rollout (source_id, revision_id, phase, waiting_for, step_index, weight, steps,
                analysis_failures, approvals_required, forbid_self_approval, content_hash, promoted_by,
                abort_requested_by, abort_reason, message, created_by, created_at, updated_at, commit_identities,
                consumers, health_timeout_seconds, consumer_states)
            SELECT DISTINCT ON (r.source_id) r.source_id, r.id, 'Completed', '', 3, 100,
                '[{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}]', 0, 1, false, 'hash', '', '', '', '',
                'sluice', now(), now(), '[]', 'ignore', 300, '[]'
            FROM gitops_revision r ORDER BY r.source_id, r.id
            """
        )
        per_source = max(1, changes // sources)
        cursor.execute(
            """
            INSERT INTO gitops_applyintent (rollout_id, source_id, step_index, weight, namespace, name, kind, action,
                commit, manifest, before, after, before_hash, after_hash, before_commit, before_content_hash, diff,
                force, recreate, origin, actor, status, created_at)
            SELECT ro.id, ro.source_id, 0, 100, 'team-' || (n %% 10), 'config-' || n, 'ConfigMap', 'update',
                md5(ro.source_id::text || '-1') || '00000000', NULL,
                jsonb_build_object('data', jsonb_build_object('LOG_LEVEL', 'info')),
                jsonb_build_object('data', jsonb_build_object('LOG_LEVEL', 'debug')),
                md5(n::text), md5((n + 1)::text), '', '',
                '[{"op": "change", "field": "data", "key": "LOG_LEVEL", "old": "info", "new": "debug"}]',
                false, false, 'configmaps/app.yaml', 'sluice', 'done', now() - (n || ' seconds')::interval
            FROM gitops_rollout ro, generate_series(1, %s) AS n
            """,
            [per_source],
        )
        cursor.execute(
            """
            INSERT INTO gitops_change (intent_id, source_id, rollout_id, commit, cluster, namespace, kind, name,
                action, before_hash, after_hash, before, after, diff, actor, step_index, weight, at, result, error)
            SELECT i.id, i.source_id, i.rollout_id, i.commit, 'default', i.namespace, i.kind, i.name, i.action,
                i.before_hash, i.after_hash, i.before, i.after, i.diff,
                CASE WHEN i.id % 7 = 0 THEN 'otto' ELSE 'sluice' END, 0, 100, i.created_at, 'ok', ''
            FROM gitops_applyintent i
            """
        )
        cursor.execute(
            "INSERT INTO gitops_rolloutevent (rollout_id, at, kind, step_index, weight, actor, message, data)"
            " SELECT id, now(), 'completed', 3, 100, 'sluice', 'all targets', '{}' FROM gitops_rollout"
        )
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM gitops_change")
        total = cursor.fetchone()[0]
        cursor.execute("SELECT max(id), min(id) FROM gitops_change")
        newest, oldest = cursor.fetchone()
        cursor.execute("SELECT id FROM gitops_rollout ORDER BY id LIMIT 1")
        rollout_id = cursor.fetchone()[0]
    return {"changes": total, "newest": newest, "oldest": oldest, "rollout": rollout_id}


def stored_preview(source_name: str, items: int = 500) -> str:
    """A worker's answer to a preview of a pull request that changes ``items`` objects, stored in the
    result backend as a worker stores it; returns the preview page's address (with its signed ticket)."""
    import time as clock
    from urllib.parse import urlencode

    from django.core import signing

    from dashboard.previews import TICKET_SALT
    from gitops.celery import app
    from gitops.models import Source

    source = Source.objects.get(name=source_name)
    item = {
        "kind": "ConfigMap",
        "action": "update",
        "reason": "changed in Git",
        "origin": "configmaps/app.yaml",
        "diff": [
            {"op": "change", "field": "data", "key": "LOG_LEVEL", "old": "info", "new": "debug"},
            {
                "op": "add",
                "field": "data",
                "key": "config.yaml",
                "old": None,
                "new": "a: 1\nb: 2\n",
                "unified": "--- data/config.yaml (live)\n+++ data/config.yaml (git)\n@@ -0,0 +1,2 @@\n+a: 1\n+b: 2\n",
            },
        ],
    }
    answer = {
        "source": source_name,
        "revision": "refs/pull/7/head",
        "outcome": "planned",
        "detail": "",
        "commit": "0" * 40,
        "author_name": "Ada",
        "author_email": "ada@example.com",
        "message": "PR 7",
        "committed_at": None,
        "computed_at": None,
        "weight": 100,
        "errors": [],
        "summary": {"update": items},
        "items_total": items,
        "consumers": [],
        "items": [{**item, "namespace": f"team-{index}", "name": "app"} for index in range(items)],
    }
    task_id = f"bench-preview-{uuid.uuid4().hex}"
    app.backend.store_result(task_id, answer, "SUCCESS")
    ticket = {"task": task_id, "source": source.pk, "revision": "refs/pull/7/head", "at": int(clock.time())}
    token = signing.dumps(ticket, salt=TICKET_SALT)
    return f"/sources/{source_name}/preview/?{urlencode({'revision': 'refs/pull/7/head', 'task': token})}"


def measure(client, url: str, runs: int) -> tuple[float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    timings = []
    queries = 0
    for index in range(runs + 3):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (url, response.status_code)
        if index >= 3:  # the first requests warm caches and connections
            timings.append(elapsed)
        queries = len(captured)
    timings.sort()
    return statistics.median(timings), timings[int(0.95 * (len(timings) - 1))], queries


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=500)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()

    from devstack import Stack

    stack = Stack()
    started_stack = not stack.is_up()
    env = stack.up()
    database = f"sluice_dashbench_{uuid.uuid4().hex[:6]}"
    os.environ.update(env)
    os.environ.update(
        {
            "DATABASE_URL": env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + database,
            "DJANGO_SETTINGS_MODULE": "sluice.settings",
            # Production settings: DEBUG off, so templates come from the cached loader.
            "DEBUG": "0",
            "SLUICE_ALLOW_HTTP": "1",  # the test client speaks plain HTTP: no redirect to https
            "SECRET_KEY": "benchmark-only-" + uuid.uuid4().hex,
            "LOG_LEVEL": "WARNING",
            "ALLOWED_HOSTS": "testserver",
        }
    )
    try:
        import psycopg

        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)
        import django

        django.setup()
        from django.contrib.auth.models import Group, User
        from django.test import Client

        started = time.perf_counter()
        filled = fill(args.changes, args.sources)
        print(
            f"filled {filled['changes']:,} changes across {args.sources} sources in {time.perf_counter() - started:.0f}s"
        )

        viewer = User.objects.create_user("bench-viewer", password="x")
        viewer.groups.add(Group.objects.get(name="viewer"))
        client = Client()
        client.force_login(viewer)
        deep_before = int(filled["oldest"]) + 500  # type: ignore[call-overload]
        pages = {
            "overview": "/",
            "change log, first page": "/changes/",
            "change log, filtered": "/changes/?source=source-250&action=update&namespace=team-3",
            "change log, by actor": "/changes/?actor=otto",
            "change log, deep page": f"/changes/?before={deep_before}",
            "rollout": f"/rollouts/{filled['rollout']}/",
            "source": "/sources/source-250/",
            "preview form": "/sources/source-250/preview/",
            "preview, 500 objects": stored_preview("source-250"),
        }
        print(f"{'page':<26} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
        worst = 0.0
        for name, url in pages.items():
            p50, p95, queries = measure(client, url, args.runs)
            worst = max(worst, p95)
            print(f"{name:<26} {p50:>8.1f} {p95:>8.1f} {queries:>8}")
        print(f"worst p95: {worst:.1f} ms (target <= 150 ms)")
    finally:
        from django.db import connections

        connections.close_all()
        import psycopg

        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if started_stack:
            stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
