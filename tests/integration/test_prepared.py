"""Prepared SELECTs (gitops/prepared.py) against real PostgreSQL: the rows Django's own queryset gives,
one statement a call, and builders that would be wrong when compiled once are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gitops.models import Freeze, Revision, Rollout, Source
from gitops.prepared import PreparedMismatch, PreparedSelect

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
