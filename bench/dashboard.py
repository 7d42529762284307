"""Dashboard benchmark: pages with a big history.

Fills a fresh database with 500 sources and 1,000,000 change-log rows (with
their intents, revisions and a rollout with a timeline) and 40 published flags
per source (20,000), then times the server side of each page through Django's
test client (no network, no browser): the overview, the change log (first page,
a filtered page, a deep page), a rollout page, a source page, the "Preview a
revision" page (empty, and with a worker's answer of 500 changed objects in the
result backend), the Freezes page (with freezes in force, so every page carries
the freeze banner), the Flags page (first page, filtered by source, stale only,
by key, a deep page) and the source administration pages as an admin sees them
(a source with 20 settings-history rows, its edit and delete forms, its live
status block, and a removal page of 1,000 objects). Prints p50 and p95 and the
number of queries per page, then the Flags CSV export of every flag (read to
the end; an export, not a page, so outside the page budget).

Each source has one rollout of changes/sources objects (one entry each); the
rollout page shows the first one. Its cost follows that rollout's size, not the
log's: `--changes 1000000 --sources 50` gives it the 20,000 objects of the
default 500 sources at 10,000,000 changes, filled in about 3 minutes, not 21. The
per-source pages show the middle source (source-250 of 500).

Usage: python bench/dashboard.py [--changes 1000000] [--sources 500] [--flags 40] [--runs 40]
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
sys.path.insert(0, str(ROOT / "bench"))

from reconcile import bench_redis  # noqa: E402 - bench/reconcile.py, beside this script


def fill(changes: int, sources: int, flags: int) -> dict[str, object]:
    """Bulk-loads with INSERT ... SELECT generate_series: the database does the work."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO gitops_source (name, url, branch, path, poll_interval, credentials_ref, allowed_namespaces,
                analysis_url_prefixes, required_approvals, created_at, next_poll_at, last_commit, last_error,
                consumer_map, consecutive_failures, last_plan, commit_url_template, webhook_secret_encrypted,
                sync_queued, notify_urls, target_clusters)
            SELECT 'source-' || lpad(i::text, 3, '0'), 'https://git.example.com/team/repo-' || i || '.git', 'main', '',
                interval '60 seconds', '', '["team-*"]', '[]', 0, now(), now() + interval '1 day',
                md5(i::text) || '00000000', '', '{}', 0, '{}',
                'https://git.example.com/team/repo-' || i || '/commit/{commit}', '', false, '[]', '[]'
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
                consumers, health_timeout_seconds, consumer_states, rollback_pending_clusters)
            SELECT DISTINCT ON (r.source_id) r.source_id, r.id, 'Completed', '', 3, 100,
                '[{"setWeight": 25}, {"pause": {}}, {"setWeight": 100}]', 0, 1, false, 'hash', '', '', '', '',
                'sluice', now(), now(), '[]', 'ignore', 300, '[]', '[]'
            FROM gitops_revision r ORDER BY r.source_id, r.id
            """
        )
        per_source = max(1, changes // sources)
        cursor.execute(
            """
            INSERT INTO gitops_applyintent (rollout_id, source_id, step_index, weight, cluster, namespace, name, kind,
                action, commit, manifest, before, after, before_hash, after_hash, before_commit, before_content_hash,
                diff, force, recreate, origin, actor, status, created_at)
            SELECT ro.id, ro.source_id, 0, 100, 'default', 'team-' || (n %% 10), 'config-' || n, 'ConfigMap', 'update',
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
        # The change log arrives in one statement, as an existing log would meet migration 0013: its
        # objects are then counted as that migration counts them (its backfill), not by the trigger.
        cursor.execute("ALTER TABLE gitops_change DISABLE TRIGGER gitops_rollout_objects_logged")
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
        cursor.execute("ALTER TABLE gitops_change ENABLE TRIGGER gitops_rollout_objects_logged")
        cursor.execute("ANALYZE gitops_change")  # an existing log has its statistics (not yet vacuumed)
        started = time.perf_counter()
        rollouts_count(connection)
        backfill_seconds = time.perf_counter() - started
        cursor.execute(
            "INSERT INTO gitops_rolloutevent (rollout_id, at, kind, step_index, weight, actor, message, data)"
            " SELECT id, now(), 'completed', 3, 100, 'sluice', 'all targets', '{}' FROM gitops_rollout"
        )
        # Freezes (one of every source in force, so every page shows the banner), their history,
        # sync windows and overrides: what the Freezes page and the banner read.
        cursor.execute(
            """
            INSERT INTO gitops_freeze (source_id, until, reason, created_by, created_at, lifted_by, lifted_at)
            SELECT CASE WHEN n = 1 THEN NULL ELSE n END, now() + interval '1 day', 'freeze ' || n, 'ines',
                now() - (n || ' hours')::interval, CASE WHEN n %% 2 = 0 THEN 'ines' ELSE '' END,
                CASE WHEN n %% 2 = 0 THEN now() ELSE NULL END
            FROM generate_series(1, %s) AS n
            """,
            [min(sources, 200)],
        )
        cursor.execute(
            """
            INSERT INTO gitops_syncwindow (kind, schedule, duration, time_zone, sources, manual_sync, created_by,
                created_at, removed_by, removed_at)
            SELECT CASE WHEN n % 2 = 0 THEN 'deny' ELSE 'allow' END, (n % 60) || ' ' || (n % 24) || ' * * *',
                interval '1 hour', 'UTC', jsonb_build_array('source-' || lpad(n::text, 3, '0'), 'billing-*'),
                n % 3 = 0, 'ines', now(), '', NULL
            FROM generate_series(1, 20) AS n
            """
        )
        cursor.execute(
            "INSERT INTO gitops_rolloutevent (rollout_id, at, kind, step_index, weight, actor, message, data)"
            " SELECT id, now(), 'override', 1, 25, 'ines', 'hotfix (overriding: frozen until ...)', '{}'"
            " FROM gitops_rollout"
        )
        # The flag catalog: every fifth flag serves one variant, changes spread over 90 days.
        cursor.execute(
            """
            INSERT INTO gitops_publishedflag (source_id, cluster, namespace, flag_set, key, key_hash, state,
                variants, variant_count, default_variant, targeting, serves_one_variant, definition_hash,
                removed, rollout_id, changed_commit, changed_at, recorded_at, reach)
            SELECT ro.source_id, 'default', 'flags', 'checkout', 'flag-' || lpad(f::text, 3, '0'),
                md5('flag-' || f), CASE WHEN f %% 9 = 0 THEN 'DISABLED' ELSE 'ENABLED' END,
                'on: true · off: false', 2, 'off',
                CASE WHEN f %% 5 = 0 THEN 'none' ELSE 'fractional 20/80 (on/off) on targetingKey' END,
                f %% 5 = 0 OR f %% 9 = 0, md5(f::text), false, ro.id, md5(ro.source_id::text || '-1') || '00000000',
                now() - ((f * ro.source_id) %% 90 || ' days')::interval, now(), 'split'
            FROM gitops_rollout ro, generate_series(1, %s) AS f
            """,
            [flags],
        )
        removal_id = fill_administration(cursor)
        cursor.execute("ANALYZE")
        cursor.execute("SELECT count(*) FROM gitops_change")
        total = cursor.fetchone()[0]
        cursor.execute("SELECT max(id), min(id) FROM gitops_change")
        newest, oldest = cursor.fetchone()
        cursor.execute("SELECT id FROM gitops_rollout ORDER BY id LIMIT 1")
        rollout_id = cursor.fetchone()[0]
        cursor.execute(
            "SELECT (SELECT total FROM gitops_rolloutobjectcount WHERE rollout_id = %s),"
            " (SELECT count(*) FROM gitops_change WHERE rollout_id = %s)",
            [rollout_id, rollout_id],
        )
        counted, entries = cursor.fetchone()
        # One entry per object in this fill: the count must be the number of entries.
        assert counted == entries, f"rollout {rollout_id}: {counted} objects counted, {entries} entries"
        cursor.execute(
            "SELECT f.id FROM gitops_publishedflag f JOIN gitops_source s ON s.id = f.source_id"
            " WHERE s.name = %s ORDER BY f.key LIMIT 1",
            [middle_source(sources)],
        )
        middle_flag = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM gitops_publishedflag")
        flag_total = cursor.fetchone()[0]
    return {
        "changes": total,
        "middle_source": middle_source(sources),
        "newest": newest,
        "oldest": oldest,
        "rollout": rollout_id,
        "rollout_objects": counted,
        "backfill_seconds": backfill_seconds,
        "middle_flag": middle_flag,
        "flags": flag_total,
        "removal": removal_id,
    }


def rollouts_count(connection) -> None:
    """Migration 0013's count of every rollout's objects (a module name no import statement takes)."""
    import importlib

    importlib.import_module("gitops.migrations.0013_rollout_object_count").rollouts_count(connection)


def middle_source(sources: int) -> str:
    """The source the per-source pages show: source-250 of the default 500."""
    return f"source-{max(1, sources // 2):03d}"


def fill_administration(cursor) -> int:
    """20 audit rows per source, and a finished removal (keep) of 1,000 objects with their changes."""
    cursor.execute(
        """
        INSERT INTO gitops_sourceaudit (source_id, source_name, action, actor, via, before, after, changed,
            message, at)
        SELECT s.id, s.name, 'update', 'ada', 'dashboard',
            jsonb_build_object('branch', 'main', 'poll_interval_seconds', 60),
            jsonb_build_object('branch', 'release', 'poll_interval_seconds', 60 + n),
            '["branch", "poll_interval_seconds"]', '', now() - (n || ' minutes')::interval
        FROM gitops_source s, generate_series(1, 20) AS n
        """
    )
    cursor.execute(
        """
        INSERT INTO gitops_sourceremoval (source_id, source_name, mode, status, requested_by, via, requested_at,
            attempted_at, started_at, finished_at, objects_total, objects_done, objects_failed, message)
        SELECT id, name, 'keep', 'done', 'ada', 'dashboard', now(), now(), now(), now(), 1000, 1000, 0, ''
        FROM gitops_source WHERE name = (SELECT max(name) FROM gitops_source) RETURNING id
        """
    )
    removal_id = cursor.fetchone()[0]
    cursor.execute(
        """
        WITH intents AS (
            INSERT INTO gitops_applyintent (rollout_id, removal_id, source_id, step_index, weight, cluster, namespace,
                name, kind, action, commit, manifest, before, after, before_hash, after_hash, before_commit,
                before_content_hash, diff, force, recreate, origin, actor, status, created_at)
            SELECT NULL, r.id, r.source_id, 0, 0, 'default', 'team-' || (n %% 10), 'kept-' || n, 'ConfigMap', 'release',
                md5(n::text) || '00000000', NULL, '{"data": {}}', '{"data": {}}', md5(n::text), md5(n::text),
                '', '', '[]', false, false, '', 'ada', 'done', now()
            FROM gitops_sourceremoval r, generate_series(1, 1000) AS n WHERE r.id = %s
            RETURNING id, source_id, commit, namespace, name
        )
        INSERT INTO gitops_change (intent_id, source_id, rollout_id, commit, cluster, namespace, kind, name,
            action, before_hash, after_hash, before, after, diff, actor, step_index, weight, at, result, error)
        SELECT id, source_id, NULL, commit, 'default', namespace, 'ConfigMap', name, 'release', '', '', NULL,
            NULL, '[]', 'ada', 0, 0, now(), 'ok', ''
        FROM intents
        """,
        [removal_id],
    )
    return int(removal_id)


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
            if response.streaming:
                b"".join(response.streaming_content)  # an export costs what reading it to the end costs
            elapsed = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (url, response.status_code)
        if index >= 3:  # the first requests warm caches and connections
            timings.append(elapsed)
        queries = len(captured)
    timings.sort()
    return statistics.median(timings), timings[int(0.95 * (len(timings) - 1))], queries


def profile_page(client, url: str, runs: int = 20) -> None:
    """Where a page's time goes: cProfile over ``runs`` requests, the top entries by own and total time."""
    import cProfile
    import pstats

    client.get(url)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        client.get(url)
    profiler.disable()
    stats = pstats.Stats(profiler).strip_dirs()
    print(f"-- profile of {url}, {runs} requests")
    stats.sort_stats("tottime").print_stats(15)
    stats.sort_stats("cumulative").print_stats(40)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=500)
    parser.add_argument("--flags", type=int, default=40, help="published flags per source")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument(
        "--profile", metavar="URL", help="after the figures, print cProfile's top entries for this page"
    )
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
            **bench_redis(env),
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
        filled = fill(args.changes, args.sources, args.flags)
        print(
            f"filled {filled['changes']:,} changes and {filled['flags']:,} flags across {args.sources} sources"
            f" in {time.perf_counter() - started:.0f}s; counted every rollout's objects (migration 0013's"
            f" backfill) in {filled['backfill_seconds']:.1f}s; the rollout page's rollout has"
            f" {filled['rollout_objects']:,} objects"
        )

        viewer = User.objects.create_user("bench-viewer", password="x")
        viewer.groups.add(Group.objects.get(name="viewer"))
        client = Client()
        client.force_login(viewer)
        admin = User.objects.create_user("bench-admin", password="x")
        admin.groups.add(Group.objects.get(name="admin"))
        admin_client = Client()
        admin_client.force_login(admin)
        deep_before = int(filled["oldest"]) + 500  # type: ignore[call-overload]
        middle = filled["middle_source"]
        pages = {
            "overview": "/",
            "change log, first page": "/changes/",
            "change log, filtered": f"/changes/?source={middle}&action=update&namespace=team-3",
            "change log, by actor": "/changes/?actor=otto",
            "change log, deep page": f"/changes/?before={deep_before}",
            "rollout": f"/rollouts/{filled['rollout']}/",
            "source": f"/sources/{middle}/",
            "freezes and windows": "/windows/",
            "preview form": f"/sources/{middle}/preview/",
            "preview, 500 objects": stored_preview(str(middle)),
            "flags, first page": "/flags/",
            "flags, by source": f"/flags/?source={middle}",
            "flags, stale only": "/flags/?stale=stale",
            "flags, by key": "/flags/?key=flag-01",
            "flags, deep page": f"/flags/?after={filled['middle_flag']}",
        }
        admin_pages = {
            "source, as an admin": f"/sources/{middle}/",
            "source status block": f"/sources/{middle}/status",
            "add a source": "/sources/new",
            "edit a source": f"/sources/{middle}/edit",
            "delete a source": f"/sources/{middle}/delete",
            "removal, 1,000 objects": f"/removals/{filled['removal']}/",
        }
        print(f"{'page':<26} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8}")
        worst = 0.0
        for name, url in [*pages.items(), *admin_pages.items()]:
            p50, p95, queries = measure(admin_client if name in admin_pages else client, url, args.runs)
            worst = max(worst, p95)
            print(f"{name:<26} {p50:>8.1f} {p95:>8.1f} {queries:>8}")
        print(f"worst p95: {worst:.1f} ms (target <= 150 ms)")
        if args.profile:
            profile_page(admin_client, args.profile)
        p50, p95, queries = measure(client, "/flags/?format=csv", max(5, args.runs // 4))
        print(
            f"{'flags CSV, every flag':<26} {p50:>8.1f} {p95:>8.1f} {queries:>8}  (an export of {filled['flags']:,} rows)"
        )
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
