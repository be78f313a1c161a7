"""Usage days: which day a moment falls on (USAGE_TIMEZONE), how an interval splits at midnight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo


def day_of(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).date().isoformat()


def next_midnight(moment: datetime, tz: ZoneInfo) -> datetime:
    local = moment.astimezone(tz)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return midnight


def split_by_day(start: datetime, seconds: int, tz: ZoneInfo) -> list[tuple[str, int]]:
    """Split `seconds` counted from `start` into whole seconds per local day (sums to `seconds`)."""
    parts: list[tuple[str, int]] = []
    remaining = seconds
    # In UTC: Python subtracts two datetimes of the same zone by their wall clocks, which would
    # count a 23- or 25-hour day as 24 hours.
    cursor = start.astimezone(UTC)
    while remaining > 0:
        boundary = next_midnight(cursor, tz).astimezone(UTC)
        room = int((boundary - cursor).total_seconds())
        take = remaining if room >= remaining else max(room, 0)
        if take == 0:  # exactly at midnight: nothing left of this day
            cursor = boundary
            continue
        parts.append((day_of(cursor, tz), take))
        remaining -= take
        cursor = cursor + timedelta(seconds=take)
    return parts
