"""The uplink seam."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from agent.buffer_drops import DeliveryMarks
from core.reading import Reading


@runtime_checkable
class Uplink(Protocol):
    """An async context manager that forwards batches.

    `send` returns only when the fleet server has confirmed storing the whole batch (HTTP 2xx;
    over MQTT its ack message, or the broker's PUBACK where configured so). It raises
    UplinkUnavailable for transient failures (no confirmation in time included), UplinkMalformed
    when the far side refuses the data, UplinkRejected when it refuses otherwise; in each case
    nothing is marked sent. `marks` (the buffer's delivery marks) go with the batch.

    `window`: how many sends the drain may have waiting at once (1: one after the other).
    """

    name: str
    window: int

    async def __aenter__(self) -> Uplink: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, batch: Sequence[Reading], marks: DeliveryMarks | None = None) -> object:
        """Returns the transport's confirmation (the server's ack for HTTP, None for MQTT)."""
        ...
