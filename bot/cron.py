"""Standard 5-field cron expressions (crontab(5)) as APScheduler triggers (pure)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # standard cron: 0 (or 7) = Sunday


def cron_trigger(crontab: str, timezone: str = "UTC") -> BaseTrigger:
    """The trigger of a standard 5-field cron expression (crontab(5)) in an IANA timezone.

    Not `CronTrigger.from_crontab`, which reads the day of week the APScheduler 3 way
    (0 = Monday): there `0 16 * * 1` fires on Tuesdays. Here the day-of-week field is read as
    cron does (0 or 7 = Sunday, 1 = Monday, or sun-sat) and handed to APScheduler as names; and
    when both day of month and day of week are restricted (neither starts with `*`), a time
    matching either fires, as in cron (`0 9 1 * 1`: the 1st of the month and every Monday).
    """
    fields = crontab.split()
    if len(fields) != 5:
        raise ValueError("cron needs 5 fields: minute hour day-of-month month day-of-week")
    minute, hour, day, month, day_of_week = fields
    zone = ZoneInfo(timezone)
    weekdays = _cron_day_of_week(day_of_week)

    def cron(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, timezone=zone
        )

    if day.startswith("*") or day_of_week.startswith("*"):
        return cron(day, weekdays)
    return OrTrigger([cron(day, "*"), cron("*", weekdays)])


def _cron_day_of_week(field: str) -> str:
    """A cron day-of-week field (`1-5`, `0,6`, `*/2`, `sun`, `mon-fri`) as APScheduler names."""
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        base, slash, step_text = part.partition("/")
        if slash and not step_text.isdigit():
            raise ValueError(f"day of week {part!r}: the step must be a number")
        step = int(step_text) if slash else 1
        if step < 1:
            raise ValueError(f"day of week {part!r}: the step must be at least 1")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            low, high = base.split("-", 1)
            first, last = _weekday(low), _weekday(high)
        else:
            first = _weekday(base)
            last = 7 if slash else first
        if first > last:
            raise ValueError(f"day of week {part!r}: the range goes backwards")
        days.update(d % 7 for d in range(first, last + 1, step))
    if days == set(range(7)):
        return "*"
    return ",".join(_WEEKDAYS[d] for d in sorted(days))


def _weekday(text: str) -> int:
    if text in _WEEKDAYS:
        return _WEEKDAYS.index(text)
    if text.isdigit() and int(text) <= 7:
        return int(text)
    raise ValueError(f"{text!r} is not a day of the week (0-7, 0 and 7 being Sunday, or sun-sat)")
