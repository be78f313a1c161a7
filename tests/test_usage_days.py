"""Usage days (`usage.py`): which local day a moment falls on, when the next local midnight is
(also on days of 23 or 25 hours), and how a run of seconds splits at midnight: into whole seconds
per day, in order, adding up to the run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from midori_preview.usage import day_of, next_midnight, split_by_day

UTC_TZ = ZoneInfo("UTC")
BANGKOK = ZoneInfo("Asia/Bangkok")  # UTC+7, no daylight saving
BERLIN = ZoneInfo("Europe/Berlin")  # 23-hour day on 2026-03-29, 25-hour day on 2026-10-25
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("moment", "tz", "day"),
    [
        (utc(2026, 1, 1, 16, 59, 59), BANGKOK, "2026-01-01"),
        (utc(2026, 1, 1, 17, 0, 0), BANGKOK, "2026-01-02"),  # local midnight belongs to the new day
        (utc(2026, 1, 1, 3, 0, 0), NEW_YORK, "2025-12-31"),
        (utc(2026, 1, 1, 0, 0, 0), UTC_TZ, "2026-01-01"),
    ],
)
def test_day_of_is_the_local_date(moment: datetime, tz: ZoneInfo, day: str) -> None:
    assert day_of(moment, tz) == day


def test_next_midnight_is_local_and_strictly_later() -> None:
    assert next_midnight(utc(2026, 1, 1, 12), BANGKOK) == utc(2026, 1, 1, 17)
    assert next_midnight(utc(2026, 1, 1, 17), BANGKOK) == utc(2026, 1, 2, 17), "at midnight: next"
    # Daylight saving: the 29 March day in Berlin has 23 hours, the 25 October day has 25.
    # (Compared in UTC: Python subtracts two datetimes of one zone by their wall clocks.)
    spring = next_midnight(utc(2026, 3, 28, 22), BERLIN)  # 23:00 CET → 00:00 on the 29th
    assert spring == utc(2026, 3, 28, 23)
    assert next_midnight(spring, BERLIN) == utc(2026, 3, 29, 22)
    autumn = next_midnight(utc(2026, 10, 24, 20), BERLIN)  # 22:00 CEST → 00:00 on the 25th
    assert autumn == utc(2026, 10, 24, 22)
    assert next_midnight(autumn, BERLIN) == utc(2026, 10, 25, 23)


def test_a_run_within_one_day_is_one_part() -> None:
    assert split_by_day(utc(2026, 1, 1, 12), 90, UTC_TZ) == [("2026-01-01", 90)]
    assert split_by_day(utc(2026, 1, 1, 12), 0, UTC_TZ) == []


def test_a_run_across_local_midnight_splits_at_it() -> None:
    start = utc(2026, 1, 1, 16, 59, 30)  # 23:59:30 in Bangkok
    assert split_by_day(start, 75, BANGKOK) == [("2026-01-01", 30), ("2026-01-02", 45)]
    assert split_by_day(start, 75, UTC_TZ) == [("2026-01-01", 75)]


def test_a_run_ending_exactly_at_midnight_and_one_starting_there() -> None:
    assert split_by_day(utc(2026, 1, 1, 23, 59, 30), 30, UTC_TZ) == [("2026-01-01", 30)]
    assert split_by_day(utc(2026, 1, 2), 30, UTC_TZ) == [("2026-01-02", 30)]


def test_a_run_of_several_days_and_across_daylight_saving() -> None:
    day = 86400
    assert split_by_day(utc(2026, 1, 1, 12), 2 * day, UTC_TZ) == [
        ("2026-01-01", day // 2),
        ("2026-01-02", day),
        ("2026-01-03", day // 2),
    ]
    # From 23:00 CET on 28 March: one hour, the 23-hour day, then two hours of the 30th.
    assert split_by_day(utc(2026, 3, 28, 22), 26 * 3600, BERLIN) == [
        ("2026-03-28", 3600),
        ("2026-03-29", 23 * 3600),
        ("2026-03-30", 2 * 3600),
    ]


def test_a_start_with_a_fraction_of_a_second_keeps_whole_seconds() -> None:
    start = utc(2026, 1, 1, 23, 59, 59) + timedelta(milliseconds=400)  # 0.6 s before midnight
    parts = split_by_day(start, 3, UTC_TZ)
    assert sum(s for _, s in parts) == 3
    assert all(isinstance(s, int) and s > 0 for _, s in parts)
    assert [d for d, _ in parts] == ["2026-01-02"], "the 0.6 s stub is too short to be a second"


@pytest.mark.parametrize("tz", [UTC_TZ, BANGKOK, BERLIN, NEW_YORK], ids=str)
def test_every_split_adds_up_in_order_of_days(tz: ZoneInfo) -> None:
    starts = [utc(2026, 3, 28, 21) + timedelta(minutes=37 * i, seconds=i) for i in range(80)]
    for start in starts:
        for seconds in (1, 59, 3600, 7200, 86399, 90001):
            parts = split_by_day(start, seconds, tz)
            assert sum(s for _, s in parts) == seconds, (start, seconds)
            days = [d for d, _ in parts]
            assert days == sorted(set(days)), (start, seconds, parts)
            assert days[0] == day_of(start, tz)
            assert all(0 < s <= 25 * 3600 for _, s in parts)


def test_a_stub_before_midnight_then_a_daylight_saving_day() -> None:
    start = utc(2026, 3, 28, 22, 59, 59) + timedelta(milliseconds=500)  # 0.5 s before midnight
    assert split_by_day(start, 26 * 3600, BERLIN) == [
        ("2026-03-29", 23 * 3600),
        ("2026-03-30", 3 * 3600),
    ]
