"""Maintenance windows: is now inside the configured days and hours of a named time zone?

Pure functions (no database, no clock unless asked), so the verdict is tested for any instant, DST
changes included. A window is a set of weekdays plus a start and end time of day in one IANA time zone;
when the end is not after the start the window runs past midnight and belongs to the day it starts on
(``days: [sat], start: 22:00, end: 04:00`` is Saturday 22:00 to Sunday 04:00).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class WindowError(ValueError):
    """A window that cannot be understood, said in one line naming the bad value."""


@dataclass(frozen=True)
class Window:
    days: tuple[int, ...]  # 0 = Monday; empty means "no window configured: always inside"
    start: dtime
    end: dtime
    timezone: str

    @property
    def configured(self) -> bool:
        return bool(self.days)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        if not self.configured:
            return "no maintenance window configured"
        days = ",".join(DAY_NAMES[d] for d in self.days)
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.timezone}"


def _parse_time(label: str, value: str) -> dtime:
    try:
        hours, minutes = str(value).strip().split(":")
        return dtime(int(hours), int(minutes))
    except ValueError:
        raise WindowError(f"window {label} {value!r} is not a time of day as HH:MM") from None


def _parse_day(value: str) -> int:
    key = str(value).strip().lower()[:3]
    if key not in DAY_NAMES:
        raise WindowError(f"window day {value!r} is not one of {', '.join(DAY_NAMES)}")
    return DAY_NAMES.index(key)


def parse_window(days: list[str] | None, start: str, end: str, timezone: str) -> Window:
    """Build a Window from inventory values, refusing in one line anything ambiguous."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"window time zone {timezone!r} is not an IANA time zone name") from None
    start_t, end_t = _parse_time("start", start), _parse_time("end", end)
    parsed = tuple(sorted({_parse_day(d) for d in days or []}))
    if parsed and start_t == end_t:
        raise WindowError(f"window start and end are both {start}: a window must last some time")
    return Window(parsed, start_t, end_t, timezone)


def _span(window: Window, day: date) -> tuple[datetime, datetime]:
    """The window opening on `day` (local), as aware datetimes; past midnight when end <= start."""
    opens = datetime.combine(day, window.start, tzinfo=window.zone)
    closes_day = day if window.end > window.start else day + timedelta(days=1)
    return opens, datetime.combine(closes_day, window.end, tzinfo=window.zone)


def check(window: Window, now: datetime | None = None) -> dict:
    """The verdict for `now` (aware; default: the current instant).

    Returns whether `now` is inside, the local time, the current window's close or the next opening.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if not window.configured:
        return {"inside": True, "configured": False, "window": window.describe(), "now": _iso(now)}
    local = now.astimezone(window.zone)
    verdict: dict = {
        "inside": False,
        "configured": True,
        "window": window.describe(),
        "now": _iso(now),
        "local_time": local.strftime("%a %Y-%m-%d %H:%M %Z"),
    }
    # The day before matters too: a window past midnight opened yesterday.
    for offset in range(-1, 8):
        day = local.date() + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        opens, closes = _span(window, day)
        if opens <= now < closes:
            verdict.update(inside=True, closes_at=_iso(closes))
            return verdict
        if opens > now:
            verdict["next_opening"] = _iso(opens)
            return verdict
    return verdict  # pragma: no cover - some listed day always comes within a week


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_now(value: str) -> datetime | None:
    """An ISO instant for rehearsals and tests ('' = the real clock); naive means UTC."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WindowError(f"window clock override {value!r} is not an ISO 8601 instant") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
