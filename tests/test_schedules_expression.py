"""EventBridge schedule expressions: every cron form of the EventBridge docs' examples and wildcard
notes, with its next five ticks computed by hand; rates; daylight-saving changes; wrong expressions."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.errors import ConfigError
from broker.registry import load_registry
from broker.schedule_expression import parse, zone

ROOT = Path(__file__).resolve().parent.parent
SUNDAY = "2026-12-06T08:48:00+00:00"  # a Sunday morning


def ticks(expression: str, start: str, timezone: str = "UTC", n: int = 5) -> list[str]:
    """The next ``n`` ticks after ``start``, as UTC times."""
    tz, parsed = zone(timezone), parse(expression)
    t: float | None = datetime.fromisoformat(start).timestamp()
    out = []
    for _ in range(n):
        assert t is not None
        t = parsed.after(t, tz)
        if t is None:
            break
        out.append(datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M"))
    return out


# (expression, start, the next five ticks in UTC), each worked out on a calendar of 2026-2028.
DOCS_EXAMPLES = [
    # the examples table: https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-cron-expressions.html
    ("cron(0 10 * * ? *)", SUNDAY,  # 10:00 every day
     ["2026-12-06 10:00", "2026-12-07 10:00", "2026-12-08 10:00", "2026-12-09 10:00", "2026-12-10 10:00"]),
    ("cron(15 12 * * ? *)", SUNDAY,  # 12:15 every day
     ["2026-12-06 12:15", "2026-12-07 12:15", "2026-12-08 12:15", "2026-12-09 12:15", "2026-12-10 12:15"]),
    ("cron(0 18 ? * MON-FRI *)", "2026-12-10T18:30:00+00:00",  # 18:00 Monday to Friday (from a Thursday evening)
     ["2026-12-11 18:00", "2026-12-14 18:00", "2026-12-15 18:00", "2026-12-16 18:00", "2026-12-17 18:00"]),
    ("cron(0 8 1 * ? *)", SUNDAY,  # 08:00 on the 1st of every month
     ["2027-01-01 08:00", "2027-02-01 08:00", "2027-03-01 08:00", "2027-04-01 08:00", "2027-05-01 08:00"]),
    ("cron(0/15 * * * ? *)", SUNDAY,  # every 15 minutes
     ["2026-12-06 09:00", "2026-12-06 09:15", "2026-12-06 09:30", "2026-12-06 09:45", "2026-12-06 10:00"]),
    ("cron(0/10 * ? * MON-FRI *)", "2026-12-11T23:31:00+00:00",  # every 10 minutes Monday to Friday
     ["2026-12-11 23:40", "2026-12-11 23:50", "2026-12-14 00:00", "2026-12-14 00:10", "2026-12-14 00:20"]),
    ("cron(0/5 8-17 ? * MON-FRI *)", "2026-12-07T17:48:00+00:00",  # every 5 minutes 08:00-17:55 Mon-Fri
     ["2026-12-07 17:50", "2026-12-07 17:55", "2026-12-08 08:00", "2026-12-08 08:05", "2026-12-08 08:10"]),
    ("cron(0 9 ? * 2#1 *)", SUNDAY,  # 09:00 on the first Monday of every month
     ["2026-12-07 09:00", "2027-01-04 09:00", "2027-02-01 09:00", "2027-03-01 09:00", "2027-04-05 09:00"]),
    # the wildcard notes of the same page
    ("cron(0 0 1 JAN,FEB,MAR ? *)", SUNDAY,  # JAN,FEB,MAR: January, February and March
     ["2027-01-01 00:00", "2027-02-01 00:00", "2027-03-01 00:00", "2028-01-01 00:00", "2028-02-01 00:00"]),
    ("cron(0 12 1-15 * ? *)", "2026-12-13T08:48:00+00:00",  # 1-15: days 1 to 15
     ["2026-12-13 12:00", "2026-12-14 12:00", "2026-12-15 12:00", "2027-01-01 12:00", "2027-01-02 12:00"]),
    ("cron(1/10 * * * ? *)", SUNDAY,  # 1/10: every tenth minute from the first
     ["2026-12-06 08:51", "2026-12-06 09:01", "2026-12-06 09:11", "2026-12-06 09:21", "2026-12-06 09:31"]),
    ("cron(0 9 7 * ? *)", SUNDAY,  # '7 ... ?': the 7th, whatever the weekday
     ["2026-12-07 09:00", "2027-01-07 09:00", "2027-02-07 09:00", "2027-03-07 09:00", "2027-04-07 09:00"]),
    ("cron(0 9 L * ? *)", SUNDAY,  # L in day-of-month: the last day of the month
     ["2026-12-31 09:00", "2027-01-31 09:00", "2027-02-28 09:00", "2027-03-31 09:00", "2027-04-30 09:00"]),
    ("cron(0 9 ? * L *)", SUNDAY,  # L in day-of-week: the last day of the week, Saturday
     ["2026-12-12 09:00", "2026-12-19 09:00", "2026-12-26 09:00", "2027-01-02 09:00", "2027-01-09 09:00"]),
    # 3W: the weekday nearest the 3rd (Jan 3 2027 a Sunday -> Monday 4th; Apr 3 a Saturday -> Friday 2nd)
    ("cron(0 9 3W * ? *)", SUNDAY,
     ["2027-01-04 09:00", "2027-02-03 09:00", "2027-03-03 09:00", "2027-04-02 09:00", "2027-05-03 09:00"]),
    # LW: the last weekday of the month (Jan 31 2027 a Sunday -> Friday 29th; Apr 30 a Friday)
    ("cron(0 9 LW * ? *)", SUNDAY,
     ["2026-12-31 09:00", "2027-01-29 09:00", "2027-02-26 09:00", "2027-03-31 09:00", "2027-04-30 09:00"]),
    ("cron(0 9 ? * 3#2 *)", SUNDAY,  # 3#2: the second Tuesday of the month
     ["2026-12-08 09:00", "2027-01-12 09:00", "2027-02-09 09:00", "2027-03-09 09:00", "2027-04-13 09:00"]),
    ("cron(0 9 ? * 6L *)", SUNDAY,  # 6L: the last Friday of the month
     ["2026-12-25 09:00", "2027-01-29 09:00", "2027-02-26 09:00", "2027-03-26 09:00", "2027-04-30 09:00"]),
    ("cron(0 12 * * ? *)", SUNDAY,  # the issue's own example
     ["2026-12-06 12:00", "2026-12-07 12:00", "2026-12-08 12:00", "2026-12-09 12:00", "2026-12-10 12:00"]),
    ("cron(0 22-2 ? * SAT *)", SUNDAY,  # a range that wraps past midnight: 22:00 to 02:00
     ["2026-12-12 00:00", "2026-12-12 01:00", "2026-12-12 02:00", "2026-12-12 22:00", "2026-12-12 23:00"]),
    ("cron(0 12 1 1 ? 2027-2028)", SUNDAY,  # the year field: two ticks, then none
     ["2027-01-01 12:00", "2028-01-01 12:00"]),
    ("cron(0 0 29 2 ? 2030/2)", SUNDAY,  # 29 February of even years from 2030: leap years only
     ["2032-02-29 00:00", "2036-02-29 00:00", "2040-02-29 00:00", "2044-02-29 00:00", "2048-02-29 00:00"]),
]


@pytest.mark.parametrize(("expression", "start", "expected"), DOCS_EXAMPLES, ids=[e[0] for e in DOCS_EXAMPLES])
def test_eventbridge_doc_examples_tick_when_eventbridge_would(expression: str, start: str,
                                                            expected: list[str]) -> None:
    assert ticks(expression, start) == expected


def test_rates_tick_on_multiples_of_the_rate_since_the_epoch() -> None:
    assert ticks("rate(5 minutes)", SUNDAY) == [
        "2026-12-06 08:50", "2026-12-06 08:55", "2026-12-06 09:00", "2026-12-06 09:05", "2026-12-06 09:10"]
    assert ticks("rate(1 hour)", SUNDAY) == [
        "2026-12-06 09:00", "2026-12-06 10:00", "2026-12-06 11:00", "2026-12-06 12:00", "2026-12-06 13:00"]
    # 1970-01-01 was a Thursday: every seven days is every Thursday at midnight UTC
    assert ticks("rate(7 days)", SUNDAY) == [
        "2026-12-10 00:00", "2026-12-17 00:00", "2026-12-24 00:00", "2026-12-31 00:00", "2027-01-07 00:00"]
    # a rate ignores the time zone: it counts elapsed time
    assert ticks("rate(1 day)", SUNDAY, "America/New_York") == ticks("rate(1 day)", SUNDAY)


def test_paris_spring_forward_skips_the_local_time_that_does_not_exist() -> None:
    # 2027-03-28 02:00 CET -> 03:00 CEST: 02:30 does not happen that day
    assert ticks("cron(30 2 * * ? *)", "2027-03-26T00:00:00+00:00", "Europe/Paris") == [
        "2027-03-26 01:30", "2027-03-27 01:30", "2027-03-29 00:30", "2027-03-30 00:30", "2027-03-31 00:30"]
    assert ticks("cron(0/30 * * * ? *)", "2027-03-28T00:00:00+00:00", "Europe/Paris", 4) == [
        "2027-03-28 00:30", "2027-03-28 01:00", "2027-03-28 01:30", "2027-03-28 02:00"]  # 01:30 CET, 03:00 CEST...


def test_paris_fall_back_runs_a_repeated_local_time_once() -> None:
    # 2027-10-31 03:00 CEST -> 02:00 CET: 02:30 happens twice, the schedule runs at the first
    assert ticks("cron(30 2 * * ? *)", "2027-10-29T00:00:00+00:00", "Europe/Paris") == [
        "2027-10-29 00:30", "2027-10-30 00:30", "2027-10-31 00:30", "2027-11-01 01:30", "2027-11-02 01:30"]


def test_new_york_fall_back_half_hours_run_once_each() -> None:
    # 2027-11-07 02:00 EDT -> 01:00 EST: 01:00 and 01:30 happen twice (05:00Z/06:00Z, 05:30Z/06:30Z)
    assert ticks("cron(0/30 1-3 * * ? *)", "2027-11-07T04:00:00+00:00", "America/New_York") == [
        "2027-11-07 05:00", "2027-11-07 05:30", "2027-11-07 07:00", "2027-11-07 07:30", "2027-11-07 08:00"]
    # from inside the repeated hour, its ticks (already run the first time round) do not come again
    assert ticks("cron(0/30 1-3 * * ? *)", "2027-11-07T06:10:00+00:00", "America/New_York", 2) == [
        "2027-11-07 07:00", "2027-11-07 07:30"]


def test_new_york_spring_forward() -> None:
    # 2027-03-14 02:00 EST -> 03:00 EDT: 02:15 does not exist that day
    assert ticks("cron(15 2 * * ? *)", "2027-03-13T00:00:00+00:00", "America/New_York", 3) == [
        "2027-03-13 07:15", "2027-03-15 06:15", "2027-03-16 06:15"]


def test_the_last_tick_at_or_before_a_time() -> None:
    first_monday = parse("cron(0 9 ? * 2#1 *)")
    t = first_monday.at_or_before(datetime.fromisoformat(SUNDAY).timestamp(), zone("UTC"))
    assert t is not None and datetime.fromtimestamp(t, UTC) == datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    at_tick = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()
    assert first_monday.at_or_before(at_tick, zone("UTC")) == at_tick


@pytest.mark.parametrize(("expression", "says"), [
    ("cron(0 10 * * * *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 10 ? * ? *)", "exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(60 10 * * ? *)", "minutes field '60': 60 is out of range 0-59"),
    ("cron(0 24 * * ? *)", "hours field '24': 24 is out of range 0-23"),
    ("cron(0 10 32 * ? *)", "day-of-month field '32': 32 is out of range 1-31"),
    ("cron(0 10 1 13 ? *)", "month field '13': 13 is out of range 1-12"),
    ("cron(0 10 ? * 0 *)", "day-of-week field '0': 0 is out of range 1-7"),
    ("cron(0 10 ? * FUN *)", "day-of-week field 'FUN': 'FUN' is not a number or SUN-SAT"),
    ("cron(0 10 * * ? 1969)", "year field '1969': 1969 is out of range 1970-2199"),
    ("cron(0 10 ? * 3#1,6#3 *)", "day-of-week field '3#1,6#3': a field with '#' holds one expression"),
    ("cron(0 10 ? * 3#6 *)", "the week after '#' is 1 to 5"),
    ("cron(0/0 10 * * ? *)", "minutes field '0/0': step '0' is not a positive number"),
    ("cron(0 ? * * ? *)", "hours field '?': '?' belongs in day-of-month or day-of-week only"),
    ("cron(0 10 * * ?)", "has 5 fields; EventBridge takes 6"),
    ("cron(0 0 10 * * ? *)", "has 7 fields; EventBridge takes 6"),
    ("rate(1 minutes)", "a value of 1 takes the singular unit ('minute')"),
    ("rate(5 minute)", "a value above 1 takes the plural unit ('minutes')"),
    ("rate(30 seconds)", "unit 'seconds' is not minute(s), hour(s) or day(s)"),
    ("rate(0 minutes)", "value '0' is not a positive whole number"),
    ("rate(1.5 hours)", "value '1.5' is not a positive whole number"),
    ("every 5 minutes", "is neither rate(VALUE UNIT) nor cron(6 fields)"),
])
def test_a_wrong_expression_names_what_is_wrong(expression: str, says: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse(expression)
    assert says in str(caught.value)


def test_a_wrong_expression_fails_at_start_up_with_the_file_function_and_field(tmp_path: Path) -> None:
    toml = tmp_path / "lambdalite.toml"
    toml.write_text('[functions.nightly]\nhandler = "handlers.payments.handler"\n\n'
                    '[[functions.nightly.triggers]]\nsource = "schedule"\nexpression = "cron(0 3 ? * 8 *)"\n')
    with pytest.raises(ConfigError) as caught:
        load_registry(toml)
    assert str(caught.value) == (f"{toml}: function 'nightly': triggers[0].expression: day-of-week field '8': "
                                 "8 is out of range 1-7")
    # the same line from the command a user runs, and from the scaler at start-up
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "LAMBDALITE_CONFIG": str(toml),
           "LAMBDALITE_VAR_DIR": str(tmp_path / "var")}
    for command in (["-m", "broker.cli", "check"], ["-m", "workers.scaler"]):
        done = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1
        assert done.stderr.strip() == f"lambdalite: {caught.value}"


@pytest.mark.parametrize(("key", "value", "says"), [
    ("timezone", '"Mars/Olympus"', "triggers[0].timezone: unknown time zone 'Mars/Olympus'"),
    ("catch_up", '"all"', "triggers[0].catch_up: Input should be 'none' or 'latest'"),
    ("input", "1979-05-27T07:32:00Z", "triggers[0].input: not JSON"),
    ("every", '"day"', "unknown key 'triggers[0].every'"),
])
def test_other_wrong_keys_of_a_schedule_are_named(tmp_path: Path, key: str, value: str, says: str) -> None:
    toml = tmp_path / "lambdalite.toml"
    toml.write_text('[functions.nightly]\nhandler = "handlers.payments.handler"\n\n[[functions.nightly.triggers]]\n'
                    f'source = "schedule"\nexpression = "rate(1 day)"\n{key} = {value}\n')
    with pytest.raises(ConfigError, match=None) as caught:
        load_registry(toml)
    assert str(caught.value).startswith(f"{toml}: function 'nightly': ")
    assert says in str(caught.value)
