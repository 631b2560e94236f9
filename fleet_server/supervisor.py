"""Supervision of the server's long-running tasks (MQTT bridge, rollout writer and sweeper, TUF
timestamp keeper, readings upkeep; the last three do their store-wide work only while this replica
holds the job's lease, fleet_server.leases): a task that dies is logged and restarted with capped
jittered backoff, and `/healthz` reports it while it is down.

    supervisor = Supervisor(registry)            # in the app factory
    supervisor.start("mqtt-bridge", bridge.run)  # in the lifespan; a job runs until cancelled
    supervisor.down()                            # {name: TaskStatus} of tasks not healthy now
    await supervisor.stop()                      # cancels every job and waits for them

A job is "down" from the moment it dies (raises, or returns: a long-running job never should)
until its restart has run `settle_s` seconds without dying again; then the failure is cleared
(restarts and the last error stay visible). The backoff resets after such a healthy run, so a job
that fails once a day restarts quickly, and one that fails on every start backs off to `cap_s`.
Metrics: quanedge_fleet_task_up{task} and quanedge_fleet_task_restarts_total{task}.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from core.backoff import Backoff

__all__ = ["Supervisor", "TaskStatus"]

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[None]]


@dataclass
class TaskStatus:
    name: str
    up: bool = False
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {"state": "running" if self.up else "restarting", "restarts": self.restarts,
                "last_error": self.last_error, "last_error_at": self.last_error_at}


class Supervisor:
    def __init__(self, registry: CollectorRegistry, *, base_s: float = 1.0, cap_s: float = 30.0,
                 settle_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.base_s, self.cap_s, self.settle_s = base_s, cap_s, settle_s
        self.clock = clock
        self.status: dict[str, TaskStatus] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._up = Gauge("quanedge_fleet_task_up", "1 while a supervised server task runs healthily.",
                         ["task"], registry=registry)
        self._restarts = Counter("quanedge_fleet_task_restarts", "Restarts of a supervised server task after it died.",
                                 ["task"], registry=registry)

    def start(self, name: str, job: Job) -> asyncio.Task[None]:
        """Run `job` under supervision (call from the running loop); returns the supervising task."""
        if name in self.status:
            raise ValueError(f"a task named {name!r} is already supervised")
        self.status[name] = TaskStatus(name)
        task = asyncio.create_task(self._supervise(name, job), name=f"supervise:{name}")
        self._tasks.append(task)
        return task

    def down(self) -> dict[str, TaskStatus]:
        """The supervised tasks that are not running healthily right now."""
        return {name: s for name, s in self.status.items() if not s.up}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()

    async def _supervise(self, name: str, job: Job) -> None:
        status = self.status[name]
        backoff = Backoff(self.base_s, self.cap_s)
        first = True
        while True:
            runner = asyncio.create_task(_run(job), name=name)
            try:
                if first:
                    self._set_up(status, True)
                    first = False
                done, _ = await asyncio.wait({runner}, timeout=self.settle_s)
                if not done:  # it survived the settle time: healthy (again)
                    if not status.up:
                        log.info("server task %s is running again after %d restart(s)", name, status.restarts)
                    self._set_up(status, True)
                    backoff.reset()
                    await asyncio.wait({runner})
            except asyncio.CancelledError:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)
                raise
            error = None if runner.cancelled() else runner.exception()
            if runner.cancelled():
                status.last_error = "cancelled from inside (not by shutdown)"
            elif error is None:
                status.last_error = "returned (a long-running task must not end)"
            else:
                status.last_error = f"{type(error).__name__}: {error}"[:500]
            status.last_error_at = self.clock()
            self._set_up(status, False)
            delay = backoff.next_delay()
            log.error("server task %s died (%s); restarting in %.1f s", name, status.last_error, delay,
                      exc_info=error)
            await asyncio.sleep(delay)
            status.restarts += 1
            self._restarts.labels(name).inc()

    def _set_up(self, status: TaskStatus, up: bool) -> None:
        status.up = up
        self._up.labels(status.name).set(1 if up else 0)


async def _run(job: Job) -> None:
    await job()
