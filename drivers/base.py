"""The driver seam.

A driver knows one device's frames and profile. It knows nothing of timing (the scheduler owns
polling, backoff, quarantine and online/offline state), buffers or uplinks. Every failure leaves a
driver as a subclass of `core.errors.DriverError`; library exceptions are mapped inside the driver.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from core.reading import Reading


@runtime_checkable
class Driver(Protocol):
    """One device behind one transport.

    Drivers sharing a bus (several RS-485 slaves) share one link object; the scheduler guarantees
    that only one request is on a bus at a time, so drivers need no locking of their own.
    """

    name: str

    async def open(self) -> None:
        """Open the transport if this driver owns it. Raises LinkError."""

    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        """Read the named points (all of the profile's when None) and decode them.

        Returns one Reading per point; a point the device marks invalid comes back with
        value None and Quality.MISSING, never as a number. Raises DriverError subclasses when the
        device cannot be read at all.
        """

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        """Carry out a named command from the profile. Raises CommandRefused or DriverError."""

    async def close(self) -> None:
        """Release the transport. Never raises."""
