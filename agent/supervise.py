"""Supervision of the agent's long-running tasks: a task that dies unexpectedly is restarted.

    sup = Supervisor()
    tg.create_task(sup.run("drain", drain.run), name="drain")
    sup.status() -> {"drain": {"state": "running" | "restarting" | "stopped", "restarts": n,
                               "last_error": "...", "last_error_at": unix seconds}, ...}

`run(name, factory)` calls `factory()` for a fresh coroutine, awaits it, and when it raises
(anything but cancellation) records the error and its time, marks the component "restarting",
waits with capped jittered backoff (`core.backoff`) and calls the factory again. A task that
returns on its own is "stopped" (not restarted: returning is how a task says it is done).
Cancellation (the agent stopping) ends supervision at once. The backoff resets once a run has
lasted `healthy_after_s`, so a task that fails once a day restarts quickly every time.

/healthz reads `status()` and answers 503 while any component is restarting (`healthy()`).
`crash(name)` is the test hook that makes a component's current run fail as a bug would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.backoff import Backoff

__all__ = ["Supervisor", "ComponentState"]

log = logging.getLogger(__name__)


class _InjectedFault(Exception):
    """Raised into a component by `Supervisor.crash` (tests)."""


@dataclass
class ComponentState:
    state: str = "starting"
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    task: asyncio.Task[Any] | None = None
    crash_requested: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error,
                "last_error_at": self.last_error_at}


class Supervisor:
    def __init__(self, *, base_s: float = 0.5, cap_s: float = 30.0, healthy_after_s: float = 60.0) -> None:
        self._base_s = base_s
        self._cap_s = cap_s
        self._healthy_after_s = healthy_after_s
        self.components: dict[str, ComponentState] = {}

    async def run(self, name: str, factory: Callable[[], Awaitable[Any]]) -> None:
        st = self.components.setdefault(name, ComponentState())
        backoff = Backoff(base_s=self._base_s, cap_s=self._cap_s)
        while True:
            started = time.monotonic()
            st.state = "running"
            inner = asyncio.ensure_future(factory())
            st.task = inner
            try:
                await asyncio.shield(inner)  # a crash() cancels `inner` only, not this loop
                st.state = "stopped"
                return
            except asyncio.CancelledError:
                if inner.cancelled() and st.crash_requested:
                    st.crash_requested = False
                    error: BaseException = _InjectedFault("crash injected by the supervisor's test hook")
                else:
                    inner.cancel()
                    await asyncio.gather(inner, return_exceptions=True)
                    st.state = "stopped"
                    raise
            except Exception as exc:  # recorded, logged, restarted: that is the point
                error = exc
            finally:
                st.task = None
            if time.monotonic() - started >= self._healthy_after_s:
                backoff.reset()
            delay = backoff.next_delay()
            st.state = "restarting"
            st.restarts += 1
            st.last_error = f"{type(error).__name__}: {error}"[:500]
            st.last_error_at = time.time()
            log.error("task %s died (%s); restart %d in %.1f s", name, st.last_error, st.restarts, delay,
                      exc_info=(type(error), error, error.__traceback__))
            await asyncio.sleep(delay)

    def crash(self, name: str) -> None:
        """Test hook: make `name`'s current run end as if it had raised."""
        st = self.components[name]
        if st.task is not None:
            st.crash_requested = True
            st.task.cancel()

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: st.as_dict() for name, st in sorted(self.components.items())}

    def healthy(self) -> bool:
        return all(st.state != "restarting" for st in self.components.values())
