"""The drain: forwards the buffer's oldest readings through an uplink, in seq order.

Rows leave the buffer only after the uplink confirmed them (`Uplink.send` returned). On any
uplink failure the drain rewinds to the oldest unconfirmed row, waits with capped jittered
backoff and reconnects, so delivery is ordered and at-least-once; the fleet server's dedup on
(box, seq) makes storage exactly-once. The drain logs the loss and the recovery of the uplink
once each, not once per retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

from agent.backoff import Backoff
from agent.buffer import DurableBuffer
from agent.errors import UplinkError, UplinkRejected
from agent.uplink.base import Uplink

log = logging.getLogger(__name__)


class UplinkObserver(Protocol):
    def sent(self, uplink: str, n: int) -> None: ...
    def uplink_state(self, uplink: str, connected: bool) -> None: ...


class Drain:
    def __init__(
        self,
        buffer: DurableBuffer,
        make_uplink: Callable[[], Uplink],
        *,
        name: str,
        batch_size: int = 1000,
        observer: UplinkObserver | None = None,
        backoff: Backoff | None = None,
        idle_wait_s: float = 1.0,
    ) -> None:
        self.buffer = buffer
        self._make_uplink = make_uplink
        self.name = name
        self.batch_size = batch_size
        self._observer = observer
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=30.0)
        self._idle_wait_s = idle_wait_s
        self.connected = False
        self.sent_total = 0
        self.last_error: str | None = None
        self.last_sent_at: float | None = None
        self._down_since: float | None = None

    async def run(self) -> None:
        while True:
            try:
                async with self._make_uplink() as uplink:
                    if getattr(uplink, "connected", False):  # MQTT: entering means connected
                        self._up()
                    await self._forward(uplink)
            except UplinkError as exc:
                self.buffer.rewind()
                self.last_error = str(exc)
                self._set_connected(False)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    level = logging.ERROR if isinstance(exc, UplinkRejected) else logging.WARNING
                    log.log(level, "uplink %s failed, readings stay buffered: %s", self.name, exc)
                delay = self._backoff.next_delay()
                if isinstance(exc, UplinkRejected):  # refused batches: don't hammer the server
                    delay = max(delay, self._backoff.cap_s / 2)
                await asyncio.sleep(delay)

    def _up(self) -> None:
        """The uplink works (connected, or a batch was confirmed): log the recovery once."""
        if self._down_since is not None:
            log.info("uplink %s is back after %.1f s", self.name, time.monotonic() - self._down_since)
            self._down_since = None
        self._set_connected(True)

    async def _forward(self, uplink: Uplink) -> None:
        while True:
            batch = await self.buffer.peek(self.batch_size)
            if not batch:
                await self.buffer.wait_for_data(self._idle_wait_s)
                continue
            await uplink.send(batch)
            await self.buffer.ack(batch[-1].seq)
            if not self.connected:
                self._up()
            self._backoff.reset()
            self.sent_total += len(batch)
            self.last_sent_at = time.time()
            if self._observer:
                self._observer.sent(self.name, len(batch))

    def _set_connected(self, up: bool) -> None:
        if up != self.connected and self._observer:
            self._observer.uplink_state(self.name, up)
        self.connected = up
