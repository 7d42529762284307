"""Freezes and sync windows (gitops.windows): cron, duration, deny over allow, manualSync, time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gitops.windows import (
    FreezeRule,
    GateKind,
    WindowError,
    WindowKind,
    WindowRule,
    change_gate,
    parse_duration,
    window_rule,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(kind: str, schedule: str, hours: float, *sources: str, manual: bool = False, tz: str = "UTC"):
    duration = timedelta(hours=hours)
    globs = sources or ("*",)
    return WindowRule(WindowKind(kind), schedule, duration, globs, manual_sync=manual, time_zone=tz)


NIGHTLY = window("allow", "0 22 * * *", 1)  # 22:00-23:00 UTC every day
OFFICE_DENY = window("deny", "0 9 * * 1-5", 8)  # weekdays 09:00-17:00 UTC
# 2026-12-01 is a Tuesday.


@pytest.mark.parametrize(
    ("moment", "open_since"),
    [
        ("2026-12-01T21:59:59", None),
        ("2026-12-01T22:00:00", "2026-12-01T22:00:00"),  # open from its start...
        ("2026-12-01T22:59:59", "2026-12-01T22:00:00"),
        ("2026-12-01T23:00:00", None),  # ...for its duration, end excluded
        ("2026-12-02T22:30:00", "2026-12-02T22:00:00"),  # and again the next day
    ],
)
def test_a_window_is_open_from_each_firing_of_its_schedule_for_its_duration(moment, open_since):
    opened = NIGHTLY.opened_at(at(moment))
    assert opened == (at(open_since) if open_since else None)


def test_a_window_longer_than_the_gap_between_firings_stays_open_across_them():
    hourly_for_two_hours = window("deny", "0 * * * *", 2)
    assert hourly_for_two_hours.opened_at(at("2026-12-01T10:30:00")) == at("2026-12-01T10:00:00")
    assert hourly_for_two_hours.opened_at(at("2026-12-01T10:00:00")) == at("2026-12-01T10:00:00")


def test_the_last_fraction_of_a_second_before_a_firing_is_still_in_the_previous_occurrence():
    every_minute_for_an_hour = window("deny", "* * * * *", 1)
    just_before = at("2026-12-01T09:08:59") + timedelta(microseconds=500_000)
    assert every_minute_for_an_hour.opened_at(just_before) == at("2026-12-01T09:08:00")
    assert NIGHTLY.opened_at(at("2026-12-01T21:59:59") + timedelta(microseconds=999_999)) is None
    just_after = at("2026-12-01T22:00:00") + timedelta(microseconds=1)
    assert NIGHTLY.opened_at(just_after) == at("2026-12-01T22:00:00")


def test_no_window_matching_means_open_always():
    gate = change_gate("shop", at("2026-12-01T03:00:00"), [], [window("allow", "0 22 * * *", 1, "billing-*")])
    assert gate.automatic and gate.kind is GateKind.OPEN and gate.reason == ""


def test_outside_every_allow_window_is_closed_and_says_when_the_next_opens():
    gate = change_gate("shop", at("2026-12-01T12:00:00"), [], [NIGHTLY])
    assert gate.kind is GateKind.OUTSIDE_ALLOW and not gate.automatic
    assert gate.until == at("2026-12-01T22:00:00")
    assert gate.reason.startswith("outside its sync windows; the next opens at 2026-12-01 22:00 UTC")
    assert change_gate("shop", at("2026-12-01T22:10:00"), [], [NIGHTLY]).automatic


def test_one_open_allow_window_of_several_is_enough():
    morning = window("allow", "0 6 * * *", 2)
    gate = change_gate("shop", at("2026-12-01T07:00:00"), [], [NIGHTLY, morning])
    assert gate.automatic
    closed = change_gate("shop", at("2026-12-01T12:00:00"), [], [NIGHTLY, morning])
    assert closed.until == at("2026-12-01T22:00:00"), "the earliest next opening"


def test_deny_wins_over_an_open_allow_window():
    always_allow = window("allow", "* * * * *", 1)
    gate = change_gate("shop", at("2026-12-01T10:00:00"), [], [always_allow, OFFICE_DENY])
    assert gate.kind is GateKind.DENY_WINDOW
    assert gate.until == at("2026-12-01T17:00:00")
    assert "denies changes until 2026-12-01 17:00 UTC" in gate.reason
    assert "deny window '0 9 * * 1-5' (8h) for *" in gate.reason
    assert change_gate("shop", at("2026-12-01T17:00:00"), [], [always_allow, OFFICE_DENY]).automatic
    # Saturday: the deny window does not fire.
    assert change_gate("shop", at("2026-12-05T10:00:00"), [], [OFFICE_DENY]).automatic


def test_windows_match_sources_by_glob():
    deny_billing = window("deny", "* * * * *", 1, "billing-*", "audit")
    moment = at("2026-12-01T10:00:00")
    assert not change_gate("billing-eu", moment, [], [deny_billing]).automatic
    assert not change_gate("audit", moment, [], [deny_billing]).automatic
    assert change_gate("auditor", moment, [], [deny_billing]).automatic
    assert change_gate("shop", moment, [], [deny_billing]).automatic


@pytest.mark.parametrize(
    ("windows", "manual"),
    [
        ([window("deny", "* * * * *", 1, manual=True)], True),
        # Every closing window must allow it.
        ([window("deny", "* * * * *", 1, manual=True), window("deny", "0 * * * *", 2)], False),
        ([window("allow", "0 22 * * *", 1, manual=True)], True),
        ([window("allow", "0 22 * * *", 1, manual=True), window("allow", "0 6 * * *", 1)], False),
        ([window("allow", "0 22 * * *", 1)], False),
        # A deny window that lets people through, open while closed allow windows do not: the allow
        # windows close it too (before, the deny window alone decided, and a person's sync went out).
        ([window("allow", "0 22 * * *", 1), window("deny", "0 9 * * *", 8, manual=True)], False),
        ([window("allow", "0 22 * * *", 1, manual=True), window("deny", "0 9 * * *", 8, manual=True)], True),
    ],
)
def test_manual_sync_goes_through_only_where_every_closing_window_allows_it(windows, manual):
    gate = change_gate("shop", at("2026-12-01T10:30:00"), [], windows)
    assert not gate.automatic
    assert gate.allows(manual=True) is manual
    assert gate.allows(manual=False) is False


def test_a_freeze_closes_its_source_and_everything_until_its_end_whatever_the_windows():
    freeze = FreezeRule(until=at("2026-12-24T18:00:00"), reason="release freeze", source="shop", by="ada")
    always_allow = window("allow", "* * * * *", 1, manual=True)
    gate = change_gate("shop", at("2026-12-20T10:00:00"), [freeze], [always_allow])
    assert gate.kind is GateKind.FROZEN
    assert not gate.allows(manual=True), "a freeze lets no sync through, manual or not"
    assert gate.reason == "frozen until 2026-12-24 18:00 UTC by ada (shop): release freeze"
    assert gate.until == freeze.until
    assert change_gate("cart", at("2026-12-20T10:00:00"), [freeze], []).automatic
    assert change_gate("shop", at("2026-12-24T18:00:00"), [freeze], []).automatic, "over at its end"


def test_the_longest_of_several_freezes_is_the_one_shown():
    short = FreezeRule(until=at("2026-12-02T00:00:00"), reason="incident", source="shop")
    everything = FreezeRule(until=at("2026-12-31T00:00:00"), reason="holidays")
    gate = change_gate("shop", at("2026-12-01T00:00:00"), [short, everything], [])
    assert gate.freeze == everything
    assert "(every source): holidays" in gate.reason


def test_a_window_in_another_time_zone_follows_its_clock_through_daylight_saving():
    # 09:00 Berlin: 08:00 UTC in winter, 07:00 UTC in summer (the change was on 2026-03-29).
    berlin = window("deny", "0 9 * * *", 1, tz="Europe/Berlin")
    assert berlin.opened_at(at("2026-03-28T08:30:00")) == at("2026-03-28T08:00:00")
    assert berlin.opened_at(at("2026-03-28T07:30:00")) is None
    assert berlin.opened_at(at("2026-03-30T07:30:00")) == at("2026-03-30T07:00:00")
    assert berlin.opened_at(at("2026-03-30T08:30:00")) is None
    assert berlin.next_opening(at("2026-03-28T12:00:00")) == at("2026-03-29T07:00:00")
    gate = change_gate("shop", at("2026-03-30T07:30:00"), [], [berlin])
    assert gate.until == at("2026-03-30T08:00:00")
    assert "Europe/Berlin" in gate.reason


def test_a_window_at_a_time_the_change_back_from_summer_time_repeats_opens_once():
    """02:30 Berlin comes twice on 2026-10-25 (00:30 and 01:30 UTC). cron fires a job with its hours
    given once; croniter fired both, so an allow window opened twice (two hours of an hour's window)."""
    berlin = window("allow", "30 2 * * *", 1, tz="Europe/Berlin")
    assert berlin.next_opening(at("2026-10-24T23:00:00")) == at("2026-10-25T00:30:00")
    assert berlin.opened_at(at("2026-10-25T01:15:00")) == at("2026-10-25T00:30:00")
    assert berlin.opened_at(at("2026-10-25T01:45:00")) is None, "not opened again at the second 02:30"
    assert berlin.next_opening(at("2026-10-25T00:45:00")) == at("2026-10-26T01:30:00")
    assert berlin.opened_at(at("2026-10-26T01:45:00")) == at("2026-10-26T01:30:00")
    # A schedule for every hour fires in both passes of the hour: each is an hour of its own.
    hourly = window("deny", "30 * * * *", 0.25, tz="Europe/Berlin")
    assert hourly.opened_at(at("2026-10-25T00:40:00")) == at("2026-10-25T00:30:00")
    assert hourly.opened_at(at("2026-10-25T01:40:00")) == at("2026-10-25T01:30:00")
    # The hour the change to summer time skips: the window opens at the change (cron's rule too).
    assert berlin.next_opening(at("2026-03-28T23:00:00")) == at("2026-03-29T01:00:00")


def test_times_given_in_another_offset_are_the_same_instant():
    moment = datetime.fromisoformat("2026-12-01T23:30:00+01:00")  # 22:30 UTC
    assert change_gate("shop", moment, [], [NIGHTLY]).automatic


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kind": "maybe"}, "kind"),
        ({"schedule": "0 22 * *"}, "schedule"),
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "0 22 * * * *"}, "schedule"),  # seconds are not Argo CD's format
        ({"duration": timedelta(0)}, "duration"),
        ({"duration": timedelta(days=32)}, "duration"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
        # Each host's own setting, or counting leap seconds: the web, beat and workers could disagree.
        ({"time_zone": "localtime"}, "time_zone"),
        ({"time_zone": "right/UTC"}, "time_zone"),
        ({"time_zone": "posix/Europe/Berlin"}, "time_zone"),
        ({"time_zone": "posixrules"}, "time_zone"),
        ({"time_zone": "Factory"}, "time_zone"),
        ({"sources": [" ", ""]}, "sources"),
        ({"sources": ["x" * 64]}, "sources"),
        ({"sources": ["shop\x00"]}, "sources"),
        ({"schedule": "0 0 30 2 *"}, "schedule"),  # February has no 30th: it never fires
        ({"schedule": "R 2 * * *"}, "schedule"),  # croniter picks another minute at each reading
        ({"schedule": "0 R(1-3) * * *"}, "schedule"),
        ({"schedule": "H 2 * * *"}, "schedule"),  # refused by croniter already (no hash id): kept as a guard
    ],
)
def test_a_window_that_cannot_work_is_refused_naming_the_field(options, field):
    asked = {"kind": "deny", "schedule": "0 9 * * 1-5", "duration": timedelta(hours=8), **options}
    with pytest.raises(WindowError) as refused:
        window_rule(**asked)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


def test_a_window_that_works_is_normalised():
    rule = window_rule(
        kind="allow", schedule=" 0  22 * * * ", duration=timedelta(hours=1), sources=["shop", "shop", "b*"]
    )
    assert rule.schedule == "0 22 * * *"
    assert rule.sources == ("shop", "b*")


def test_month_and_day_names_with_an_r_or_an_h_are_no_random_field():
    rule = window_rule(kind="deny", schedule="0 2 * mar,apr thu,sat", duration=timedelta(hours=1))
    assert rule.schedule == "0 2 * mar,apr thu,sat"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("8h", 28800), ("2d", 172800), ("1h30m", 5400)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    ["", "h", "10", "1x", "1.5h", "-1h", "1h 30m", "9999999h", "30m1h", "5m5m", "999999d999999d999999d"],
)
def test_bad_durations_are_refused(text):
    with pytest.raises(WindowError):
        parse_duration(text)


def test_a_stored_window_whose_schedule_never_fires_is_never_open():
    never = window("allow", "0 0 31 2 *", 1)
    moment = at("2026-12-01T10:00:00")
    assert never.opened_at(moment) is None and never.next_opening(moment) is None
    gate = change_gate("shop", moment, [], [never])
    assert not gate.automatic and gate.until is None
    assert "none of them opens again" in gate.reason


def test_a_freeze_far_past_the_calendars_end_is_a_problem_of_its_field_not_a_crash():
    """``999999d999999d999999d`` was summed and added to now: OverflowError, a 500 on the freeze form."""
    from gitops.freezes import FreezeError, parse_until

    with pytest.raises(FreezeError, match="is not a duration"):
        parse_until("999999d999999d999999d")
    with pytest.raises(FreezeError, match="longer than ten years"):
        parse_until("999999999d")
