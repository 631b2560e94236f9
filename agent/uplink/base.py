"""The uplink seam."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Sequence, runtime_checkable

from agent.reading import Reading


@runtime_checkable
class Uplink(Protocol):
    """An async context manager that forwards batches.

    `send` returns only when the far side has confirmed the whole batch (MQTT PUBACK at QoS 1,
    HTTP 2xx from the fleet server). It raises UplinkUnavailable for transient failures and
    UplinkRejected when the far side refuses the batch; in both cases nothing is marked sent.
    """

    name: str

    async def __aenter__(self) -> "Uplink": ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, batch: Sequence[Reading]) -> object:
        """Returns the transport's confirmation (the server's ack for HTTP, None for MQTT)."""
        ...
