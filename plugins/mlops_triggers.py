"""The canary watch's waiting, in Airflow's triggerer: no worker slot is held while live traffic is watched.

The training DAG's `watch_canary` task opens the canary's traffic share and defers to
`CanaryWatchTrigger`, which judges the canary against `stable` every few seconds
(`pipeline.release.canary.judge`, in a thread) until a check fails on enough answers or the
window ends, then hands the verdict back to the task, which rolls a failed canary back.

Lives in the plugins folder because the triggerer imports a trigger by its class path and has
the plugins folder, like the DAG folder, on its `sys.path`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

log = logging.getLogger(__name__)

# Judging may fail for a while (a serving restart); past the window by this much, the watch gives up.
GIVE_UP_AFTER_DEADLINE_S = 120.0


class CanaryWatchTrigger(BaseTrigger):
    """Judges the canary until decided; the event is the plan and the verdict (or `error` when it could not judge).

    Args:
        config: The run's PipelineConfig as a dict (thresholds, serving endpoint, request logs).
        plan: The watch plan from `pipeline.release.canary.start_watch`.
    """

    def __init__(self, config: dict[str, Any], plan: dict[str, Any]):
        super().__init__()
        self.config, self.plan = config, plan

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {"config": self.config, "plan": self.plan}

    async def run(self):
        from pipeline.core.config import PipelineConfig
        from pipeline.release import canary

        config = PipelineConfig(**self.config).validate()
        while True:
            final = time.time() >= self.plan["deadline"]
            try:
                verdict = await asyncio.to_thread(canary.judge, config, self.plan, final)
            except Exception as err:  # noqa: BLE001  (retried until the window is well past; then reported)
                if time.time() >= self.plan["deadline"] + GIVE_UP_AFTER_DEADLINE_S:
                    yield TriggerEvent({"plan": self.plan, "error": f"{type(err).__name__}: {err}"})
                    return
                log.warning("canary watch: could not judge yet: %s", err)
            else:
                log.info("canary %s: %s", self.plan["version"], verdict.summary)
                if verdict.decided:
                    yield TriggerEvent({"plan": self.plan, **verdict.to_dict()})
                    return
            await asyncio.sleep(max(canary.poll_seconds(config, self.plan), 1.0))
