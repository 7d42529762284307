"""Prepared SELECTs (gitops/prepared.py) against real PostgreSQL: the rows Django's own queryset gives,
one statement a call, and builders that would be wrong when compiled once are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import DataError, connection, transaction
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gitops.models import Change, Freeze, Revision, Rollout, Source
from gitops.prepared import PreparedMismatch, PreparedSelect, PreparedUpdate

pytestmark = pytest.mark.django_db(transaction=True)


def _rollouts(source_id: int):
    return Rollout.objects.filter(source_id=source_id).select_related("source", "revision").order_by("-id")


def _sources_with_rollouts(count: int) -> list[Source]:
    sources = []
    for index in range(count):
        source = Source.objects.create(name=f"prepared-{index}", url="file:///nowhere.git")
        for step in range(index + 1):
            revision = Revision.objects.create(source=source, commit=f"{index:02x}{step:038x}")
            Rollout.objects.create(
                source=source, revision=revision, weight=10 * step, steps=[{"setWeight": 10}]
            )
        sources.append(source)
    return sources


def test_each_call_gives_the_querysets_rows_for_its_own_values_in_one_statement():
    sources = _sources_with_rollouts(3)
    prepared = PreparedSelect(_rollouts, int)
    for source in [*sources, *reversed(sources)]:
        with CaptureQueriesContext(connection) as queries:
            got = prepared(source.pk)
        expected = list(_rollouts(source.pk))
        assert len(queries.captured_queries) == 1
        assert [r.pk for r in got] == [r.pk for r in expected]
        assert [(r.weight, r.steps, r.created_at) for r in got] == [
            (r.weight, r.steps, r.created_at) for r in expected
        ]
        # select_related came along: reading the relations asks nothing more.
        with CaptureQueriesContext(connection) as queries:
            assert {(r.source.name, r.revision.commit) for r in got} == {
                (r.source.name, r.revision.commit) for r in expected
            }
        assert queries.captured_queries == []


def test_values_and_tuples_and_several_arguments_of_each_kind():
    source = _sources_with_rollouts(1)[0]
    later = timezone.now() + timedelta(hours=1)
    Freeze.objects.create(source=source, until=later, reason="release", created_by="alice")
    commits = PreparedSelect(
        lambda source_id, commit: Revision.objects.filter(source_id=source_id, commit=commit).values_list(
            "commit", flat=True
        ),
        int,
        str,
    )
    revision = Revision.objects.get(source=source)
    assert commits(source.pk, revision.commit) == [revision.commit]
    assert commits(source.pk, "f" * 40) == []
    freezes = PreparedSelect(
        lambda at: Freeze.objects.filter(until__gt=at).values_list("source__name", "reason"), datetime
    )
    assert freezes(timezone.now()) == [(source.name, "release")]
    assert freezes(later + timedelta(seconds=1)) == []


@pytest.mark.parametrize("value", [True, None, 1.0, "1"])
def test_an_argument_of_another_type_is_refused(value):
    with pytest.raises(TypeError, match="must be int"):
        PreparedSelect(_rollouts, int)(value)


def test_a_naive_time_is_refused():
    freezes = PreparedSelect(lambda at: Freeze.objects.filter(until__gt=at), datetime)
    with pytest.raises(TypeError, match="must be datetime"):
        freezes(datetime(2030, 1, 1))
    assert freezes(datetime(2030, 1, 1, tzinfo=UTC)) == []


@pytest.mark.parametrize(
    ("build", "kinds"),
    [
        # "value%": compiled once, every later value would be matched as the first.
        (lambda prefix: Source.objects.filter(name__startswith=prefix), (str,)),
        # The same argument as it is and rewritten: found once, the rewritten one kept for good.
        (lambda name: Source.objects.filter(Q(name=name) | Q(name__startswith=name)), (str,)),
        # Past the int4 column's range Django leaves the condition out, or refuses the whole query.
        (lambda version: Rollout.objects.filter(version=version), (int,)),
        (lambda source_id: Rollout.objects.filter(source_id=source_id, version__lt=source_id), (int,)),
        # A value the argument's stand-in happens to be one more than.
        (lambda a, b: Rollout.objects.filter(source_id=a, revision_id=b - 1), (int, int)),
        # Django checks it against the transaction as it compiles: each call must.
        (lambda source_id: Rollout.objects.filter(source_id=source_id).select_for_update(), (int,)),
    ],
    ids=["startswith", "as-it-is-and-rewritten", "int4-range", "int4-range-or", "arithmetic", "for-update"],
)
def test_a_builder_whose_statement_would_not_hold_for_other_values_is_refused(build, kinds):
    prepared = PreparedSelect(build, *kinds)
    with pytest.raises(TypeError):
        prepared(*(1 if kind is int else "prep" for kind in kinds))


def test_a_builder_that_reads_the_clock_is_found_out_by_the_check(settings):
    """What a builder reads besides its arguments is kept from the first compile for good: the check
    (on in every test run) compiles each call's queryset too and refuses the difference."""
    settings.SLUICE_PREPARED_CHECK = True
    due = PreparedSelect(
        lambda source_id: Rollout.objects.filter(source_id=source_id, created_at__lte=timezone.now()), int
    )

    # Its two compiles read two times, so it is nearly always refused as it is first compiled; should
    # the clock not move between them, the check finds the next call's time is not the first's.
    def twice() -> None:
        due(1)
        due(1)

    with pytest.raises((TypeError, PreparedMismatch)):
        twice()


def test_a_builder_refused_once_stays_refused():
    """One that passes only sometimes (reading the clock) must not pass later, where nothing checks it."""
    built = []

    def sometimes(source_id: int):
        built.append(source_id)
        if len(built) <= 2:  # its first two compiles disagree; later ones would not
            return Source.objects.filter(pk=source_id, name=str(len(built)))
        return Source.objects.filter(pk=source_id)

    prepared = PreparedSelect(sometimes, int)
    for _ in range(2):
        with pytest.raises(TypeError, match="parameter"):
            prepared(1)
    assert len(built) == 2, "the refusal is kept, not compiled again"


# -- prepared UPDATEs -----------------------------------------------------------------------------


def _finished(source_id: int, now: datetime, error: str):
    return Source.objects.filter(pk=source_id), {
        "last_synced_at": now,
        "last_error": error,
        "consecutive_failures": 0,
    }


def test_an_update_sets_its_own_values_in_the_statement_queryset_update_makes():
    sources = [Source.objects.create(name=f"upd-{index}", url="file:///nowhere.git") for index in range(3)]
    Source.objects.update(consecutive_failures=4)
    finished = PreparedUpdate(_finished, int, datetime, str)
    for index, source in enumerate([*sources, *reversed(sources)]):
        now = timezone.now() - timedelta(minutes=index)
        with CaptureQueriesContext(connection) as prepared_queries:
            assert finished(source.pk, now, f"error {index}") == 1
        row = Source.objects.values("last_synced_at", "last_error", "consecutive_failures").get(pk=source.pk)
        assert row == {"last_synced_at": now, "last_error": f"error {index}", "consecutive_failures": 0}
        queryset, values = _finished(source.pk, now, f"error {index}")
        with CaptureQueriesContext(connection) as django_queries:
            queryset.update(**values)
        # The very statement Django sends, parameters included (as the server received them).
        assert [q["sql"] for q in prepared_queries.captured_queries] == [
            q["sql"] for q in django_queries.captured_queries
        ]
    assert finished(10**12, timezone.now(), "") == 0, "no such row: nothing changed"


def test_a_prepared_compare_and_swap_is_won_once():
    source = Source.objects.create(name="upd-claim", url="file:///nowhere.git")
    claim = PreparedUpdate(
        lambda source_id, now: (
            Source.objects.filter(pk=source_id, sync_queued=False),
            {"sync_queued": True, "sync_queued_at": now},
        ),
        int,
        datetime,
    )
    assert [claim(source.pk, timezone.now()) for _ in range(3)] == [1, 0, 0]
    assert Source.objects.get(pk=source.pk).sync_queued


def test_a_deleted_source_is_not_updated_through_its_manager():
    source = Source.objects.create(name="upd-deleted", url="file:///nowhere.git")
    Source.all_objects.filter(pk=source.pk).update(deleted_at=timezone.now())
    assert PreparedUpdate(_finished, int, datetime, str)(source.pk, timezone.now(), "x") == 0
    assert Source.all_objects.get(pk=source.pk).last_error == ""


@pytest.mark.parametrize(
    ("build", "kinds", "refusal"),
    [
        # Across a relation: Django SELECTs the rows' keys first, then updates by them.
        (
            lambda name: (Rollout.objects.filter(source__name=name), {"message": "x"}),
            (str,),
            "more than one table",
        ),
        (
            lambda prefix: (Source.objects.filter(name__startswith=prefix), {"last_error": "x"}),
            (str,),
            "not an argument",
        ),
        # A value computed from the argument: compiled once, kept for good.
        (
            lambda source_id: (Source.objects.filter(pk=source_id), {"last_error": str(source_id)}),
            (int,),
            "not an argument",
        ),
        # A value read from the clock: the two compiles differ where no argument went.
        (
            lambda source_id: (Source.objects.filter(pk=source_id), {"last_synced_at": timezone.now()}),
            (int,),
            "not an argument",
        ),
        (lambda source_id: (Source.objects.filter(pk=source_id)[:1], {"last_error": "x"}), (int,), "sliced"),
        (lambda source_id: (Source.objects.filter(pk=source_id), {}), (int,), "sets nothing"),
    ],
    ids=["relation", "startswith", "computed", "clock", "sliced", "nothing-set"],
)
def test_an_update_that_would_not_hold_for_other_values_is_refused(build, kinds, refusal):
    source = Source.objects.create(name="upd-refused", url="file:///nowhere.git")
    prepared = PreparedUpdate(build, *kinds)
    with pytest.raises(TypeError, match=refusal):
        prepared(*(source.pk if kind is int else "upd" for kind in kinds))
    assert Source.objects.get(pk=source.pk).last_error == ""


@pytest.mark.parametrize(
    ("build", "refusal"),
    [
        # An append-only log's queryset refuses update(): a prepared one must not write it anyway.
        (lambda pk: (Change.objects.filter(pk=pk), {"actor": "x"}), "update of its own"),
        (
            lambda pk: (
                Source.objects.filter(pk=pk).union(Source.objects.filter(pk=pk)),
                {"last_error": "x"},
            ),
            "combined",
        ),
        (lambda pk: (Source.objects.using("default").filter(pk=pk), {"last_error": "x"}), "router"),
    ],
    ids=["append-only", "union", "using"],
)
def test_an_update_django_would_not_make_as_one_statement_here_is_refused(build, refusal):
    source = Source.objects.create(name="upd-unlike", url="file:///nowhere.git")
    with pytest.raises(TypeError, match=refusal):
        PreparedUpdate(build, int)(source.pk)
    assert Source.objects.get(pk=source.pk).last_error == ""


def test_a_failed_prepared_update_inside_a_transaction_marks_it_for_rollback():
    source = Source.objects.create(name="upd-atomic", url="file:///nowhere.git")
    fetched = PreparedUpdate(
        lambda pk, commit: (Source.objects.filter(pk=pk), {"last_commit": commit}), int, str
    )
    with transaction.atomic():
        with pytest.raises(DataError):
            fetched(source.pk, "f" * 300)  # longer than the column
        assert transaction.get_connection().needs_rollback


def test_the_passes_prepared_updates_send_what_django_sends():
    """Each one the worker and the web run, beside ``queryset.update(**values)`` for the same values:
    JSON, a choices enum, None, booleans and two times among them."""
    from gitops import reconcile, schedule
    from gitops.fetch import revisions

    source = Source.objects.create(name="upd-sites", url="file:///nowhere.git")
    revision = Revision.objects.create(source=source, commit="a" * 40)
    now = timezone.now()
    calls = [
        (schedule._CLAIM_QUEUED_SYNC, (source.pk, now, now - timedelta(minutes=10))),
        (reconcile._FINISHED, (source.pk, now, "", now + timedelta(minutes=1))),
        (reconcile._REQUESTS_TAKEN, (source.pk,)),
        (revisions._FETCHED, (source.pk, now, "b" * 40, source.url, source.branch)),
        (revisions._VALID, (revision.pk,)),
    ]
    for prepared, arguments in calls:
        for _ in range(2):  # the second runs the statement kept
            with CaptureQueriesContext(connection) as ours, transaction.atomic():
                assert prepared(*arguments) == 1
                transaction.set_rollback(True)
            queryset, values = prepared.build(*arguments)
            with CaptureQueriesContext(connection) as djangos, transaction.atomic():
                assert queryset.update(**values) == 1
                transaction.set_rollback(True)
            sent = [q["sql"] for q in ours.captured_queries if q["sql"].startswith("UPDATE")]
            assert len(sent) == 1
            assert sent == [q["sql"] for q in djangos.captured_queries if q["sql"].startswith("UPDATE")]


@pytest.mark.parametrize("value", [None, True, "1", datetime(2030, 1, 1)])
def test_an_update_argument_of_another_type_is_refused(value):
    with pytest.raises(TypeError, match="must be"):
        PreparedUpdate(_finished, int, datetime, str)(value, datetime(2030, 1, 1, tzinfo=UTC), "")


def test_the_check_finds_an_update_builder_that_reads_what_is_not_an_argument(settings):
    settings.SLUICE_PREPARED_CHECK = True
    source = Source.objects.create(name="upd-check", url="file:///nowhere.git")
    read = iter(["first", "first", "second"])  # its two compiles agree; the next call's does not
    prepared = PreparedUpdate(lambda pk: (Source.objects.filter(pk=pk), {"last_error": next(read)}), int)
    with pytest.raises(PreparedMismatch):
        prepared(source.pk)
    assert Source.objects.get(pk=source.pk).last_error == "", "nothing was written"
