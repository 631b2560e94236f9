"""The driver seam.

A driver knows one device's frames and profile. It knows nothing of timing (the scheduler owns
polling, backoff, quarantine and online/offline state), buffers or uplinks. Every failure leaves a
driver as a subclass of `core.errors.DriverError`; library exceptions are mapped inside the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.reading import Reading

if TYPE_CHECKING:
    from drivers.modbus.profile import Profile
    from drivers.modbus.timing import LineTiming


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


@dataclass(frozen=True, slots=True)
class BusInfo:
    """What a driver on a shared bus declares to the bus scheduler (agent.scheduler)."""

    profile: Profile                 # the register map the scheduler plans paced, coalesced reads from
    line: LineTiming | None = None   # the serial line's timing (t3.5 gaps, capacity); None on TCP
    timeout_s: float | None = None     # the link's reply timeout (checked against the largest read)


@runtime_checkable
class BusAware(Protocol):
    """A driver (or a wrapper of one) that declares its bus: `bus_info()` is None when it has none."""

    def bus_info(self) -> BusInfo | None:
        """The read plan's profile, the line timing and the timeout; None if not on a shared bus."""
