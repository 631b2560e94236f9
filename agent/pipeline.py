"""The box's data path between the drivers and the buffer.

    schedulers --submit()--> queue --> [inference stage] --> buffer.append (durable) --> counted

One task owns the queue. It takes everything queued at once (so one group commit covers many
devices), runs the optional inference stage, and appends to the buffer. A failing stage never
stops readings: they go on unjudged and the failure is counted. A failing buffer is retried
with backoff while the queue absorbs the gap; when the queue is full the schedulers wait
(backpressure), so memory stays bounded and nothing is silently dropped.

A reading that breaks the boundary rules (`check_reading`, applied by the buffer's append: a lone
surrogate, a non-finite value) is refused on its own - logged with its reason, counted in
`stats()["refused"]` and the metrics - and never holds up the others. `store()` (a device waiting
for our answer) checks first and raises RecordRefused, so the device is told why instead of "stored".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from agent.buffer import DurableBuffer
from core.backoff import Backoff
from core.errors import RecordRefused, StorageError
from core.reading import Reading, check_reading

log = logging.getLogger(__name__)


class Stage(Protocol):
    async def process(self, readings: list[Reading]) -> list[Reading]: ...


class StoreObserver(Protocol):
    def stored(self, n: int) -> None: ...
    def refused(self, n: int) -> None: ...


class _Durable(list):
    """A queued batch whose submitter waits for its commit (Pipeline.store)."""

    def __init__(self, readings: list[Reading], done: asyncio.Future[None]) -> None:
        super().__init__(readings)
        self.done = done


class Pipeline:
    def __init__(
        self,
        buffer: DurableBuffer,
        *,
        stage: Stage | None = None,
        observer: StoreObserver | None = None,
        max_queued_batches: int = 10_000,
        max_rows_per_append: int = 20_000,
        on_commit: Callable[[int, int], None] | None = None,
        alarms: Any = None,
    ) -> None:
        """`on_commit(first_seq, last_seq)` is called after each durable append (also settable as
        the `on_commit` attribute before `run()`; tests/pause_points.py logs acknowledged appends so)."""
        self.buffer = buffer
        self.stage = stage
        self.alarms = alarms  # agent.alarms.AlarmEvaluator: threshold alarms, before the stage
        self._observer = observer
        self._queue: asyncio.Queue[list[Reading]] = asyncio.Queue(max_queued_batches)
        self._stored_waiters: list[asyncio.Future[None]] = []  # resolved by the next append that commits
        self._max_rows = max_rows_per_append
        self.stage_failures = 0
        self.stored_total = 0
        self.refused_total = 0
        self._leftover: list[Reading] = []
        self.last_refusal: str | None = None
        self._backoff = Backoff(base_s=0.2, cap_s=10.0)
        self.on_commit = on_commit

    async def submit(self, readings: list[Reading]) -> None:
        """Queue readings for storage (waits when the queue is full)."""
        await self._queue.put(readings)

    async def store(self, readings: list[Reading]) -> None:
        """Queue readings and return only once they are committed to the buffer (durable).

        For sources that acknowledge to a device (a plate camera, an access controller): the device
        keeps its event until it has our answer, so the answer must wait for the commit. Cancelling
        the wait does not take the readings back; they are stored all the same.

        Raises RecordRefused (nothing queued) when a reading breaks the boundary rules."""
        for i, r in enumerate(readings):
            try:
                check_reading(r)
            except ValueError as exc:
                raise RecordRefused(str(exc), index=i) from None
        done = asyncio.get_running_loop().create_future()
        await self._queue.put(_Durable(readings, done))
        await asyncio.shield(done)

    def requeue(self, readings: list[Reading]) -> None:
        """At shutdown (no waiting on a full queue): readings `flush()` stores first."""
        self._leftover.extend(readings)

    def queued(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            self._note(first)
            batch = list(first)
            batch.extend(self._take_queued())
            try:
                await self._store(await self._judge(batch))
            except asyncio.CancelledError:  # stopped mid-batch: nobody may be told "stored"
                for w in self._stored_waiters:
                    w.cancel()
                self._stored_waiters = []
                raise
            self._release()

    def _note(self, item: list[Reading]) -> None:
        if isinstance(item, _Durable):
            self._stored_waiters.append(item.done)

    def _release(self) -> None:
        waiters, self._stored_waiters = self._stored_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _take_queued(self) -> list[Reading]:
        out: list[Reading] = []
        while len(out) < self._max_rows:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self._note(item)
            out.extend(item)
        return out

    async def _judge(self, batch: list[Reading]) -> list[Reading]:
        if self.alarms is not None:
            batch = self.alarms.apply(batch)
        if self.stage is None:
            return batch
        try:
            return await self.stage.process(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the model failed: readings still flow, unjudged
            self.stage_failures += 1
            log.error("inference stage failed (%d so far), readings stored unjudged: %s", self.stage_failures, exc)
            return batch

    def _refuse(self, reading: Reading, reason: str) -> None:
        self.refused_total += 1
        self.last_refusal = f"{reading.device}.{reading.point}: {reason}"[:300]
        if self.refused_total == 1 or self.refused_total % 1000 == 0:
            log.error("refused a reading that cannot be stored (%d so far): %s", self.refused_total, self.last_refusal)
        if self._observer is not None and hasattr(self._observer, "refused"):
            self._observer.refused(1)

    async def _store(self, batch: list[Reading]) -> None:
        warned = False
        while batch:
            try:
                result = await self.buffer.append(batch)
            except RecordRefused as exc:
                # The buffer checks every reading (once, there) and names the first bad one: refuse
                # that one alone and append the rest.
                if exc.index is None or not 0 <= exc.index < len(batch):
                    for r in batch:
                        self._refuse(r, exc.reason)
                    return
                self._refuse(batch[exc.index], exc.reason)
                batch = batch[:exc.index] + batch[exc.index + 1:]
                continue
            except StorageError as exc:
                if not warned:
                    log.error("buffer append failed, retrying (readings held in memory): %s", exc)
                    warned = True
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            if self.on_commit is not None:
                self.on_commit(result.first_seq, result.last_seq)
            for i, why in result.refused:
                self._refuse(batch[i], why)
            n = len(batch) - len(result.refused)
            self.stored_total += n
            if self._observer:
                self._observer.stored(n)
            return

    async def flush(self) -> int:
        """After the producers stopped: store what is still queued. Returns how many readings."""
        batch, self._leftover = self._leftover, []
        batch.extend(self._take_queued())
        while not self._queue.empty():
            batch.extend(self._take_queued())
        if batch:
            await self._store(await self._judge(batch))
        self._release()
        return len(batch)

    def stats(self) -> dict[str, Any]:
        return {"queued_batches": self.queued(), "stored": self.stored_total, "stage_failures": self.stage_failures,
                "refused": self.refused_total, "last_refusal": self.last_refusal}
