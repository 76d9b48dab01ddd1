"""EventBridge schedule expressions: ``rate(5 minutes)`` and ``cron(0 12 * * ? *)``, and their ticks.

The syntax is EventBridge's, checked field by field here so that a wrong expression fails at start-up
naming the field: six cron fields (minutes, hours, day-of-month, month, day-of-week, year), ``?`` in
exactly one of the two day fields, ``L``, ``W`` and ``#``, day-of-week 1 = Sunday, years 1970-2199;
``rate(VALUE UNIT)`` in minutes, hours or days (singular for 1, plural above), nothing faster than
a minute.

The calendar arithmetic (last day of a month, the weekday nearest a date, the n-th Friday) is
croniter's: each AWS field is translated to its five-field syntax (day-of-week 0 = Sunday, ``nL`` as
``L(n-1)``), ranges and steps already expanded, and the year field filtered here. Ticks are walked in
the schedule's local wall-clock time and mapped to instants with :mod:`zoneinfo` under EventBridge
Scheduler's daylight-saving rules: a local time that does not exist (the hour skipped in spring) has
no tick, a local time that happens twice (the hour repeated in autumn) has one, the first.
Rate ticks fall on whole multiples of the rate since the Unix epoch, whatever the time zone.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import CroniterError, croniter

YEARS = (1970, 2199)
_RATE = re.compile(r"^rate\(\s*(\S+)\s+(\S+)\s*\)$")
_CRON = re.compile(r"^cron\((.*)\)$")
_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {name: i + 1 for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
#: Local times are walked one tick at a time; a schedule whose next tick is further than this many
#: candidates away (a year field far in the future is skipped directly, not walked) has none.
_MAX_WALK = 100_000


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minutes", 0, 59, {}),
    _Field("hours", 0, 23, {}),
    _Field("day-of-month", 1, 31, {}),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 1, 7, _DAYS),
    _Field("year", *YEARS, {}),
)


class Rate:
    """``rate(VALUE UNIT)``: a tick every ``seconds``, on whole multiples of it since the epoch."""

    def __init__(self, text: str, seconds: int) -> None:
        self.text = text
        self.seconds = seconds

    def after(self, t: float, zone: ZoneInfo) -> float | None:
        """The first tick strictly after ``t`` (seconds since the epoch)."""
        return (t // self.seconds + 1) * self.seconds

    def at_or_before(self, t: float, zone: ZoneInfo) -> float | None:
        """The last tick at or before ``t``."""
        return (t // self.seconds) * self.seconds

    def count(self, after: float, until: float, zone: ZoneInfo, cap: int = 10_000) -> int:
        """How many ticks fall in ``(after, until]`` (at most ``cap``)."""
        return int(max(0, min(cap, until // self.seconds - after // self.seconds)))

    def __str__(self) -> str:
        return self.text


class Cron:
    """``cron(minutes hours day-of-month month day-of-week year)`` in a time zone's wall-clock time."""

    def __init__(self, text: str, spec: str, years: frozenset[int] | None, last_weekday: bool = False) -> None:
        self.text = text
        self.spec = spec  # croniter's five fields
        self.years = years  # None: every year
        self.last_weekday = last_weekday  # LW: of the days croniter finds, only the month's last weekday

    def after(self, t: float, zone: ZoneInfo) -> float | None:
        """The first tick strictly after ``t`` (seconds since the epoch), or None when there is none."""
        return next(self._walk(t, zone, forward=True), None)

    def at_or_before(self, t: float, zone: ZoneInfo) -> float | None:
        """The last tick at or before ``t``, or None."""
        return next(self._walk(t, zone, forward=False), None)

    def count(self, after: float, until: float, zone: ZoneInfo, cap: int = 10_000) -> int:
        """How many ticks fall in ``(after, until]`` (at most ``cap``)."""
        n = 0
        for tick in self._walk(after, zone, forward=True):
            if tick > until or n >= cap:
                break
            n += 1
        return n

    def _walk(self, t: float, zone: ZoneInfo, forward: bool) -> Iterator[float]:
        """Ticks after ``t`` (forward) or at or before it (backward), nearest first."""
        start = datetime.fromtimestamp(t, zone).replace(tzinfo=None, fold=0)
        # Walk from the wall-clock time a minute either side, so that a tick at that very minute
        # is seen; instants are then checked against t exactly.
        start += timedelta(minutes=-1) if forward else timedelta(minutes=1)
        seen = 0
        while seen < _MAX_WALK:
            allowed = self._year_allowed(start, forward)
            if allowed is None:
                return
            try:
                it = croniter(self.spec, allowed)
                while seen < _MAX_WALK:
                    wall: datetime = it.get_next(datetime) if forward else it.get_prev(datetime)
                    seen += 1
                    if self.years is not None and wall.year not in self.years:
                        start = wall
                        break
                    if self.last_weekday and not _last_weekday(wall):
                        continue
                    instant = _instant(wall, zone)
                    if instant is None:
                        continue  # a local time the clocks skip: no tick
                    if (instant > t) if forward else (instant <= t):
                        yield instant
            except CroniterError:  # croniter found no date within its own search bound
                return

    def _year_allowed(self, wall: datetime, forward: bool) -> datetime | None:
        """``wall``, or the edge of the nearest allowed year when its year is not one; None if no year is left."""
        if self.years is None or wall.year in self.years:
            return wall
        if forward:
            later = [y for y in self.years if y > wall.year]
            return datetime(min(later), 1, 1) - timedelta(minutes=1) if later else None
        earlier = [y for y in self.years if y < wall.year]
        return datetime(max(earlier) + 1, 1, 1) if earlier else None

    def __str__(self) -> str:
        return self.text


Expression = Rate | Cron


def _last_weekday(day: datetime) -> bool:
    """Whether ``day`` is the last Monday-to-Friday of its month."""
    if day.weekday() >= 5:
        return False
    following = day + timedelta(days=3 if day.weekday() == 4 else 1)  # the next weekday
    return following.month != day.month


def _instant(wall: datetime, zone: ZoneInfo) -> float | None:
    """The instant of a local wall-clock time: the first of two when it happens twice, None when the
    clocks skip it."""
    aware = wall.replace(tzinfo=zone, fold=0)
    back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != wall.replace(fold=0):
        return None
    return aware.timestamp()


def parse(text: str) -> Expression:
    """Parse an EventBridge schedule expression; raises ValueError naming the part that is wrong."""
    if not isinstance(text, str):
        raise ValueError("must be a string: rate(...) or cron(...)")
    stripped = text.strip()
    if stripped.startswith("rate("):
        return _parse_rate(stripped)
    if stripped.startswith("cron("):
        return _parse_cron(stripped)
    raise ValueError(f"{text!r} is neither rate(VALUE UNIT) nor cron(6 fields)")


def _parse_rate(text: str) -> Rate:
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"{text!r}: write rate(VALUE UNIT), e.g. rate(5 minutes)")
    value, unit = match.groups()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{text!r}: value {value!r} is not a positive whole number")
    n = int(value)
    singular = unit.removesuffix("s")
    if singular not in _UNITS:
        raise ValueError(f"{text!r}: unit {unit!r} is not minute(s), hour(s) or day(s)")
    if n == 1 and unit != singular:
        raise ValueError(f"{text!r}: a value of 1 takes the singular unit ({singular!r})")
    if n > 1 and unit == singular:
        raise ValueError(f"{text!r}: a value above 1 takes the plural unit ({singular + 's'!r})")
    return Rate(text, n * _UNITS[singular])


def _parse_cron(text: str) -> Cron:
    match = _CRON.match(text)
    if match is None:
        raise ValueError(f"{text!r}: write cron(minutes hours day-of-month month day-of-week year)")
    fields = match.group(1).split()
    if len(fields) != 6:
        raise ValueError(f"{text!r}: has {len(fields)} fields; EventBridge takes 6 "
                         "(minutes hours day-of-month month day-of-week year)")
    fields = [f.upper() for f in fields]
    minutes, hours, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ValueError(f"{text!r}: exactly one of day-of-month and day-of-week must be '?'")
    spec = [
        _plain(_FIELDS[0], minutes),
        _plain(_FIELDS[1], hours),
        _day_of_month(dom),
        _plain(_FIELDS[3], month),
        _day_of_week(dow),
    ]
    years = None if year == "*" else frozenset(_values(_FIELDS[5], year))
    cron = Cron(text, " ".join(spec), years, last_weekday=dom == "LW")
    try:
        croniter(cron.spec)
    except CroniterError as e:  # what the field checks above let through, croniter's words
        raise ValueError(f"{text!r}: not a valid cron expression: {e}") from e
    return cron


def _where(field: _Field, value: str) -> str:
    return f"{field.name} field {value!r}"


def _number(field: _Field, token: str, whole: str) -> int:
    if token in field.names:
        return field.names[token]
    if not token.isdigit():
        names = f" or {min(field.names, key=field.names.__getitem__)}-{max(field.names, key=field.names.__getitem__)}"
        raise ValueError(f"{_where(field, whole)}: {token!r} is not a number{names if field.names else ''}")
    n = int(token)
    if not field.low <= n <= field.high:
        raise ValueError(f"{_where(field, whole)}: {n} is out of range {field.low}-{field.high}")
    return n


def _values(field: _Field, text: str) -> list[int]:
    """The values of a field made of ``*``, numbers (or names), ranges, steps and commas; wrapping
    ranges (``FRI-MON``, ``22-2``) run past the end to the start."""
    if not text:
        raise ValueError(f"{field.name} field is empty")
    out: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"{_where(field, text)}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            first, last = field.low, field.high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _number(field, a, text), _number(field, b, text)
        else:
            first = _number(field, base, text)
            last = field.high if slash else first
        span = field.high - field.low + 1
        count = (last - first) % span + 1
        out.update(field.low + (first - field.low + i) % span for i in range(0, count, step))
    return sorted(out)


def _list(field: _Field, values: list[int]) -> str:
    return "*" if len(values) == field.high - field.low + 1 else ",".join(map(str, values))


def _plain(field: _Field, text: str) -> str:
    if text == "?":
        raise ValueError(f"{_where(field, text)}: '?' belongs in day-of-month or day-of-week only")
    return _list(field, _values(field, text))


def _day_of_month(text: str) -> str:
    field = _FIELDS[2]
    if text == "?":
        return "*"
    if text.endswith("W"):
        day = text[:-1]
        if day == "L":  # the month's last weekday: one of the last days, kept by Cron._walk
            return "26,27,28,29,30,31"
        n = _number(field, day, text)
        return f"{n}W"
    parts = text.split(",")
    if "L" in parts:
        rest = [p for p in parts if p != "L"]
        return ",".join([*(map(str, _values(field, ",".join(rest))) if rest else []), "L"])
    if any("L" in p or "W" in p for p in parts):
        raise ValueError(f"{_where(field, text)}: L stands alone (or in a list); W follows one day (e.g. 3W)")
    return _list(field, _values(field, text))


def _day_of_week(text: str) -> str:
    field = _FIELDS[4]
    if text == "?":
        return "*"
    if text == "L":
        return "6"  # the last day of the week: Saturday
    if "#" in text:
        day, _, nth = text.partition("#")
        if "," in text or "-" in text or "/" in text:
            raise ValueError(f"{_where(field, text)}: a field with '#' holds one expression (e.g. 3#2)")
        if not nth.isdigit() or not 1 <= int(nth) <= 5:
            raise ValueError(f"{_where(field, text)}: the week after '#' is 1 to 5")
        return f"{_number(field, day, text) - 1}#{int(nth)}"
    if text.endswith("L"):
        day = text[:-1]
        if not day or any(c in day for c in ",-/*"):
            raise ValueError(f"{_where(field, text)}: L follows one day (e.g. 6L, the last Friday)")
        return f"L{_number(field, day, text) - 1}"
    if "L" in text.split(","):
        raise ValueError(f"{_where(field, text)}: L stands alone or follows one day (e.g. 6L)")
    return _list(field, [v - 1 for v in _values(field, text)])


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Paris``); raises ValueError for one that does not exist."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; a path-like name a ValueError
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Paris')") from None
