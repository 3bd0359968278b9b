"""A cron timetable that never starts a run for a slot already past.

Airflow's `CronTriggerTimetable` with `catchup=False` runs the most recent past slot as soon as
a DAG is first scheduled, unpaused, or its scheduler comes back after missing a slot: a fresh
`make airflow` at 10:00 started the 02:00 training at once. `UpcomingCronTimetable` keeps
every scheduled slot the scheduler reaches in time, and moves a slot that is more than
`late_start_limit` (default 2 minutes) in the past to the next one.

Lives in the plugins folder because the scheduler must know a custom timetable class: the
project's plugin (`mlops_plugin.py`) registers it, and the DAG files import it from here.
"""

from __future__ import annotations

import datetime
from typing import Any

from airflow._shared.timezones.timezone import coerce_datetime, parse_timezone, utcnow
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.trigger import CronTriggerTimetable

DEFAULT_LATE_START_LIMIT = datetime.timedelta(minutes=2)


class UpcomingCronTimetable(CronTriggerTimetable):
    """Runs at each cron slot from now on; a slot missed by more than `late_start_limit` is skipped.

    Args:
        cron: The cron expression, e.g. "0 2 * * *".
        timezone: The time zone the expression is read in.
        late_start_limit: How late the scheduler may start a slot's run; later, the slot waits
            for the next one. The margin covers the scheduler's own loop delay.
    """

    def __init__(
        self,
        cron: str,
        *,
        timezone: str | Any,
        late_start_limit: datetime.timedelta = DEFAULT_LATE_START_LIMIT,
    ) -> None:
        super().__init__(cron, timezone=timezone)
        self._late_start_limit = late_start_limit

    @property
    def summary(self) -> str:
        return f"{self._expression} (upcoming slots only)"

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "late_start_limit": self._late_start_limit.total_seconds()}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> UpcomingCronTimetable:
        return cls(
            data["expression"],
            timezone=parse_timezone(data["timezone"]),
            late_start_limit=datetime.timedelta(seconds=data.get("late_start_limit", 120)),
        )

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        info = super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval, restriction=restriction
        )
        if info is None or restriction.catchup:
            return info
        now = coerce_datetime(utcnow())
        if info.run_after >= now - self._late_start_limit:
            return info
        upcoming = self._align_to_next(now)
        if restriction.latest is not None and restriction.latest < upcoming:
            return None
        return DagRunInfo.interval(coerce_datetime(upcoming - self._interval), upcoming)
