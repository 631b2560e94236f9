"""The box's data path between the drivers and the buffer.

    schedulers --submit()--> queue --> [inference stage] --> buffer.append (durable) --> counted

One task owns the queue. It takes everything queued at once (so one group commit covers many
devices), runs the optional inference stage, and appends to the buffer. A failing stage never
stops readings: they go on unjudged and the failure is counted. A failing buffer is retried
with backoff while the queue absorbs the gap; when the queue is full the schedulers wait
(backpressure), so memory stays bounded and nothing is silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from agent.backoff import Backoff
from agent.buffer import DurableBuffer
from agent.errors import StorageError
from agent.reading import Reading

log = logging.getLogger(__name__)


class Stage(Protocol):
    async def process(self, readings: list[Reading]) -> list[Reading]: ...


class StoreObserver(Protocol):
    def stored(self, n: int) -> None: ...


class Pipeline:
    def __init__(
        self,
        buffer: DurableBuffer,
        *,
        stage: Stage | None = None,
        observer: StoreObserver | None = None,
        max_queued_batches: int = 10_000,
        max_rows_per_append: int = 20_000,
        ack_log: Path | None = None,
    ) -> None:
        self.buffer = buffer
        self.stage = stage
        self._observer = observer
        self._queue: asyncio.Queue[list[Reading]] = asyncio.Queue(max_queued_batches)
        self._max_rows = max_rows_per_append
        self.stage_failures = 0
        self.stored_total = 0
        self._backoff = Backoff(base_s=0.2, cap_s=10.0)
        # Ack journal (diagnostic for crash tests and test rigs): one "first last" line per
        # acknowledged append, written after the durable commit returned.
        self._ack_fd = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if ack_log else None

    async def submit(self, readings: list[Reading]) -> None:
        """Queue readings for storage (waits when the queue is full)."""
        await self._queue.put(readings)

    def queued(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        while True:
            batch = list(await self._queue.get())
            batch.extend(self._take_queued())
            await self._store(await self._judge(batch))

    def _take_queued(self) -> list[Reading]:
        out: list[Reading] = []
        while len(out) < self._max_rows:
            try:
                out.extend(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out

    async def _judge(self, batch: list[Reading]) -> list[Reading]:
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

    async def _store(self, batch: list[Reading]) -> None:
        warned = False
        while True:
            try:
                result = await self.buffer.append(batch)
            except StorageError as exc:
                if not warned:
                    log.error("buffer append failed, retrying (readings held in memory): %s", exc)
                    warned = True
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            if self._ack_fd is not None:
                os.write(self._ack_fd, f"{result.first_seq} {result.last_seq}\n".encode())
            self.stored_total += len(batch)
            if self._observer:
                self._observer.stored(len(batch))
            return

    async def flush(self) -> int:
        """After the producers stopped: store what is still queued. Returns how many readings."""
        batch = self._take_queued()
        while not self._queue.empty():
            batch.extend(self._take_queued())
        if batch:
            await self._store(await self._judge(batch))
        return len(batch)

    def stats(self) -> dict[str, Any]:
        return {"queued_batches": self.queued(), "stored": self.stored_total, "stage_failures": self.stage_failures}
