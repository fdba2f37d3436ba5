"""`schedule.cron`: the next start time of a scheduled run (UTC).

The configuration's cron numbers weekdays from 0 = Monday (configuration.md §5), while cron
and croniter count 0 = Sunday; the day-of-week field is translated (numbers, ranges, steps and
names) so a file written for the original fires on the same days here.
"""

from __future__ import annotations

from datetime import datetime, timezone

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _day(token: str) -> int:
    token = token.lower()
    if token in _DAYS:
        return _DAYS.index(token)
    value = int(token)
    if not 0 <= value <= 7:
        raise ValueError(f"weekday {token} out of range")
    return 6 if value == 7 else value  # 7 is Sunday in both conventions


def _days(item: str) -> set[int]:
    """One comma-separated item of the weekday field, as Monday-first numbers."""
    base, _, step_text = item.partition("/")
    step = int(step_text) if step_text else 1
    if base == "*":
        first, last = 0, 6
    elif "-" in base:
        a, b = base.split("-", 1)
        first, last = _day(a), _day(b)
    else:
        first = _day(base)
        last = 6 if step_text else first
    return set(range(first, last + 1, step))


def to_croniter(expression: str) -> str:
    """The same schedule in croniter's convention (0 = Sunday, Sunday also 7)."""
    fields = expression.split()
    if len(fields) != 5 or fields[4] == "*":
        return expression
    days: set[int] = set()
    for item in fields[4].split(","):
        days |= _days(item)
    fields[4] = ",".join(str(d + 1) for d in sorted(days))  # Monday 0 -> 1 ... Sunday 6 -> 7
    return " ".join(fields)


def next_fire(expressions: list[str], after: datetime) -> datetime:
    """The earliest start strictly after `after` over all expressions (UTC, aware)."""
    from croniter import croniter

    if after.tzinfo is None:
        after = after.replace(tzinfo=timezone.utc)
    after = after.astimezone(timezone.utc)
    times = [croniter(to_croniter(e), after).get_next(datetime) for e in expressions]
    return min(times)
