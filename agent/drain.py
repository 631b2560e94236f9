"""The drain: forwards the buffer's oldest readings through an uplink, in seq order.

Rows leave the buffer only after the uplink confirmed that the fleet server STORED them
(`Uplink.send` returned: the HTTP answer, or the server's ack over MQTT). Up to `uplink.window`
batches may await their confirmation at once; they are confirmed to the buffer strictly in seq
order (a later batch's confirmation waits for the earlier ones). On any uplink failure, an
unconfirmed batch past its timeout included, the drain drops every send in flight, rewinds to the
oldest unconfirmed row, waits with capped jittered backoff and reconnects, so delivery is ordered
and at-least-once; the fleet server's dedup on (box, seq) makes storage exactly-once. The drain
logs the loss and the recovery of the uplink once each, not once per retry, and keeps the last
error with its time until the uplink works again.

Batches hold `batch_size` rows; while a backlog of at least 4 catch-up batches waits (after an
outage), they hold `catchup_batch_size` (4 x batch_size, at most 5,000): the fleet server pays a
fixed cost per message, so a full buffer drains faster in fewer, larger ones.

Every batch carries the buffer's delivery marks (agent.buffer_drops: the oldest seq still held
and the ranges dropped undelivered); once a batch is confirmed the ranges it announced are
forgotten, so the fleet server can tell an announced drop from a loss.

Malformed rows never block. Before a batch goes out each row is checked with the wire rules
(`check_reading`, the rules `from_row` applies on the far side: rows stored by an agent from
before those checks may break them); a row that fails, and a row the uplink refuses as malformed
(`UplinkMalformed`: the encoder refused it, or the server answered 400/413/422), is moved to the
buffer's quarantine table with its reason (counted, kept, shown in /healthz) and the drain goes
on. When the refusal names the row (the fleet server's 422 {"row": i, "field"}), the rows before
it are sent, that row quarantined and the rest sent; otherwise the batch is bisected until the
bad row is alone. Credential refusals (401/403: plain `UplinkRejected`) are not malformed data:
the rows stay buffered and are retried slowly. A server that refuses row after row
(`REFUSED_STREAK_LIMIT` in a row without one accepted) is taken to be broken or mismatched, not
the rows: the drain stops quarantining, keeps the rows and backs off as for a credential refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.buffer import DurableBuffer
from agent.buffer_drops import DeliveryMarks
from agent.uplink.base import Uplink
from core.backoff import Backoff
from core.errors import UplinkError, UplinkMalformed, UplinkRejected, UplinkUnacknowledged
from core.reading import Reading, check_reading

log = logging.getLogger(__name__)

#: Consecutive rows the far side refused, none accepted in between, before the drain blames the
#: server (wrong version, misconfiguration) rather than the rows and stops quarantining them.
REFUSED_STREAK_LIMIT = 50
#: Catch-up batches: at most this many rows, used while at least CATCHUP_BACKLOG_BATCHES of them wait.
CATCHUP_BATCH_MAX = 5000
CATCHUP_BACKLOG_BATCHES = 4


class UplinkObserver(Protocol):
    def sent(self, uplink: str, n: int) -> None: ...
    def uplink_state(self, uplink: str, connected: bool) -> None: ...


@dataclass
class _InFlight:
    batch: list[Reading]
    marks: DeliveryMarks
    task: asyncio.Task[object]


class Drain:
    def __init__(
        self,
        buffer: DurableBuffer,
        make_uplink: Callable[[], Uplink],
        *,
        name: str,
        batch_size: int = 1000,
        catchup_batch_size: int | None = None,
        observer: UplinkObserver | None = None,
        backoff: Backoff | None = None,
        idle_wait_s: float = 1.0,
    ) -> None:
        self.buffer = buffer
        self._make_uplink = make_uplink
        self.name = name
        self.batch_size = batch_size
        # A backlog (after an outage) goes out in larger batches: every message costs the fleet
        # server a fixed amount (a thread hop, a transaction, an ack), which caps how fast a full
        # buffer drains (bench/RESULTS.md, delivery). Live data keeps the small batches.
        self.catchup_batch_size = max(batch_size, catchup_batch_size if catchup_batch_size is not None
                                      else min(4 * batch_size, CATCHUP_BATCH_MAX))
        self._observer = observer
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=30.0)
        self._idle_wait_s = idle_wait_s
        self.connected = False
        self.sent_total = 0
        self.last_error: str | None = None     # the uplink's last failure, until it works again
        self.last_error_at: float | None = None
        self.last_sent_at: float | None = None
        self.quarantined = 0
        self.last_quarantine: str | None = None
        self._refused_streak = 0
        self._down_since: float | None = None
        self._unacknowledged = False  # the last failure was a batch the server never confirmed

    async def run(self) -> None:
        while True:
            try:
                async with self._make_uplink() as uplink:
                    if getattr(uplink, "connected", False):  # MQTT: entering means connected
                        # ...to the broker: that cures a connection error, not a missing ack.
                        self._up(clear_error=not self._unacknowledged)
                    await self._forward(uplink)
            except UplinkError as exc:
                self._unacknowledged = isinstance(exc, UplinkUnacknowledged)
                self.buffer.rewind()
                self.last_error = str(exc)
                self.last_error_at = time.time()
                self._set_connected(False)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    level = logging.ERROR if isinstance(exc, UplinkRejected) else logging.WARNING
                    log.log(level, "uplink %s failed, readings stay buffered: %s", self.name, exc)
                delay = self._backoff.next_delay()
                if isinstance(exc, UplinkRejected):  # refused batches: don't hammer the server
                    delay = max(delay, self._backoff.cap_s / 2)
                await asyncio.sleep(delay)

    def _up(self, *, clear_error: bool = True) -> None:
        """The uplink works (connected, or a batch was confirmed): log the recovery once."""
        if clear_error:
            if self._down_since is not None:
                log.info("uplink %s is back after %.1f s", self.name, time.monotonic() - self._down_since)
                self._down_since = None
            self.last_error = self.last_error_at = None
            self._unacknowledged = False
        self._set_connected(True)

    async def _forward(self, uplink: Uplink) -> None:
        window = max(1, int(getattr(uplink, "window", 1)))
        inflight: deque[_InFlight] = deque()
        try:
            while True:
                while len(inflight) < window:
                    batch, marks = await self.buffer.next_batch(self._batch_limit())
                    if not batch:
                        break
                    good = await self._screen(batch)
                    if good:
                        self.buffer.mark_handed_out(_seq(good[-1]))
                        task = asyncio.create_task(uplink.send(good, marks), name=f"quanedge-send-{self.name}")
                        inflight.append(_InFlight(good, marks, task))
                if not inflight:
                    await self.buffer.wait_for_data(self._idle_wait_s)
                    continue
                head = inflight[0]
                await asyncio.wait((head.task,))
                inflight.popleft()
                try:
                    head.task.result()
                except UplinkMalformed as exc:
                    # Later batches were sent past a refused one: drop them (a resend is deduplicated),
                    # isolate the bad row(s) one send at a time, then go on from there.
                    await _drop(inflight)
                    self.buffer.rewind()
                    await self._isolate(uplink, head.batch, head.marks, exc)
                    continue
                await self._confirmed(head.batch, head.marks)
        finally:
            await _drop(inflight)

    def _batch_limit(self) -> int:
        if self.buffer.stats()["depth"] >= CATCHUP_BACKLOG_BATCHES * self.catchup_batch_size:
            return self.catchup_batch_size
        return self.batch_size

    async def _screen(self, batch: list[Reading]) -> list[Reading]:
        """The rows that pass the wire rules (as from_row applies them; cheaper than a round trip);
        the others go to the quarantine."""
        good: list[Reading] = []
        for r in batch:
            try:
                check_reading(r)
            except ValueError as exc:
                await self._quarantine(r, f"refused before sending: {exc}")
                continue
            good.append(r)
        return good

    async def _send(self, uplink: Uplink, batch: list[Reading], marks: DeliveryMarks) -> None:
        """Send one batch and wait for it (isolation: one at a time); bad rows are isolated."""
        try:
            await uplink.send(batch, marks)
        except UplinkMalformed as exc:
            await self._isolate(uplink, batch, marks, exc)
            return
        await self._confirmed(batch, marks)

    async def _confirmed(self, batch: list[Reading], marks: DeliveryMarks) -> None:
        await self.buffer.ack(_seq(batch[-1]))
        self.buffer.forget_drops(marks.dropped)
        self._refused_streak = 0
        if not self.connected or self.last_error is not None:
            self._up()
        self._backoff.reset()
        self.sent_total += len(batch)
        self.last_sent_at = time.time()
        if self._observer:
            self._observer.sent(self.name, len(batch))

    async def _isolate(self, uplink: Uplink, batch: list[Reading], marks: DeliveryMarks,
                       exc: UplinkMalformed) -> None:
        if exc.row is not None and 0 <= exc.row < len(batch):
            i = exc.row
            if i:
                await self._send(uplink, batch[:i], marks)
            field = f" (field {exc.field})" if exc.field else ""
            await self._refused(batch[i], f"refused by the uplink{field}: {exc}")
            if i + 1 < len(batch):
                await self._send(uplink, batch[i + 1:], marks)
            return
        if len(batch) == 1:
            await self._refused(batch[0], f"refused by the uplink: {exc}")
            return
        mid = len(batch) // 2  # no row named: bisect until the bad one is alone
        await self._send(uplink, batch[:mid], marks)
        await self._send(uplink, batch[mid:], marks)

    async def _refused(self, reading: Reading, reason: str) -> None:
        self._refused_streak += 1
        if self._refused_streak > REFUSED_STREAK_LIMIT:
            raise UplinkRejected(f"the far side refused {REFUSED_STREAK_LIMIT} rows in a row as malformed and "
                                 f"accepted none: holding the rows (not quarantining) until it accepts one; "
                                 f"last: {reason}"[:500])
        await self._quarantine(reading, reason)

    async def _quarantine(self, reading: Reading, reason: str) -> None:
        await self.buffer.quarantine([(reading, reason)])
        self.buffer.mark_handed_out(_seq(reading))
        self.quarantined += 1
        self.last_quarantine = f"seq {reading.seq}: {reason}"[:500]
        if self._observer is not None and hasattr(self._observer, "quarantined"):
            self._observer.quarantined(self.name, 1)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected and self._observer:
            self._observer.uplink_state(self.name, up)
        self.connected = up


async def _drop(inflight: deque[_InFlight]) -> None:
    """Cancel the sends still in flight and collect them (their outcome no longer matters)."""
    tasks = [f.task for f in inflight]
    inflight.clear()
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


def _seq(reading: Reading) -> int:
    """A buffered reading's seq (the buffer gives every row one)."""
    assert reading.seq is not None
    return reading.seq
