"""Wire time on an RS-485 line, and whether a bus can carry what it is asked to poll.

Numbers (devices.md, "Modbus on RS-485"): a character is start + data + parity + stop bits, so at
9600 8N1 it is 10 bits = 1.042 ms; t1.5 and t3.5 are 1.5 and 3.5 characters, fixed at 0.75 ms and
1.75 ms above 19200 baud. A function 03/04 read of n registers is an 8-byte request and a
5 + 2n byte reply; one transaction on the wire is

    request + t3.5 (end of request) + slave turnaround + reply + t3.5 (before the next request)

e.g. 10 registers at 9600 8N1 with 20 ms turnaround: 8.3 + 3.65 + 20 + 26.0 + 3.65 = 61.7 ms, about
16 reads/s. One bus has one master and serialises everything, so a bus whose devices want more wire
time per second than a second is over-subscribed: `capacity_report` says so at start-up, and which
devices will be late by how much, instead of leaving it to be discovered in the field.

How the scheduler shares an over-subscribed bus (agent.scheduler): the earliest-due device goes
first and a device that is late is re-queued at "now", so the late devices are served round-robin
while the ones with long intervals keep theirs. `capacity_report` models exactly that: a device is
late when its interval is shorter than the round-robin period P of the late set L,

    P = sum(cycle_i for i in L) / (1 - sum(cycle_j / poll_j for j not in L)),

found by starting with every device in L and moving out the ones whose interval is >= P.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DEFAULT_TURNAROUND_S", "CapacityReport", "DeviceCapacity", "DeviceLoad", "LineTiming",
    "capacity_report", "read_reply_bytes", "READ_REQUEST_BYTES", "EXCEPTION_REPLY_BYTES",
]

log = logging.getLogger(__name__)

READ_REQUEST_BYTES = 8      # unit, function, address (2), count (2), CRC (2)
EXCEPTION_REPLY_BYTES = 5   # unit, function | 0x80, code, CRC (2)
DEFAULT_TURNAROUND_S = 0.02  # devices.md: slaves take 5-50 ms; its worked example uses 20 ms
_FIXED_GAPS_ABOVE = 19200
_FIXED_T15_S, _FIXED_T35_S = 0.00075, 0.00175


def read_reply_bytes(count: int) -> int:
    """Reply to a function 03/04 read: unit, function, byte count, 2 bytes per register, CRC."""
    if not isinstance(count, int) or not 1 <= count <= 125:
        raise ValueError(f"a read covers 1..125 registers, got {count!r}")
    return 5 + 2 * count



class SerialLine(Protocol):
    """A serial line's settings as LineDefaults and BusConfig carry them."""

    @property
    def baudrate(self) -> int: ...
    @property
    def parity(self) -> str: ...
    @property
    def stopbits(self) -> int: ...
    @property
    def bytesize(self) -> int: ...

@dataclass(frozen=True, slots=True)
class LineTiming:
    """One serial line's settings and the timing they imply."""

    baudrate: int
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.baudrate, int) or isinstance(self.baudrate, bool) or not 300 <= self.baudrate <= 921600:
            raise ValueError(f"baudrate must be an integer 300..921600, got {self.baudrate!r}")
        if self.parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be 'N', 'E' or 'O', got {self.parity!r}")
        if self.stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, got {self.stopbits!r}")
        if self.bytesize not in (7, 8):
            raise ValueError(f"bytesize must be 7 or 8, got {self.bytesize!r}")

    @classmethod
    def of(cls, line: SerialLine) -> LineTiming:
        """From anything with baudrate/parity/stopbits/bytesize (LineDefaults, BusConfig)."""
        return cls(line.baudrate, line.parity, line.stopbits, line.bytesize)

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    @property
    def bits_per_char(self) -> int:
        return 1 + self.bytesize + (self.parity != "N") + self.stopbits

    @property
    def char_s(self) -> float:
        return self.bits_per_char / self.baudrate

    @property
    def t15_s(self) -> float:
        return _FIXED_T15_S if self.baudrate > _FIXED_GAPS_ABOVE else 1.5 * self.char_s

    @property
    def t35_s(self) -> float:
        return _FIXED_T35_S if self.baudrate > _FIXED_GAPS_ABOVE else 3.5 * self.char_s

    def wire_s(self, nbytes: int) -> float:
        return nbytes * self.char_s

    def read_s(self, count: int, turnaround_s: float = DEFAULT_TURNAROUND_S) -> float:
        """One read transaction of `count` registers, gaps and turnaround included."""
        if not turnaround_s >= 0:
            raise ValueError(f"turnaround_s must be >= 0, got {turnaround_s!r}")
        return (self.wire_s(READ_REQUEST_BYTES) + self.t35_s + turnaround_s
                + self.wire_s(read_reply_bytes(count)) + self.t35_s)

    def timeout_floor_s(self, count: int, turnaround_s: float = 0.05) -> float:
        """The shortest timeout that does not cut off a slow but healthy slave's reply."""
        return self.read_s(count, turnaround_s) - self.t35_s


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    """What one device asks of the bus: a poll every poll_s, made of these reads (register counts)."""

    name: str
    poll_s: float
    reads: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.poll_s > 0:
            raise ValueError(f"device {self.name}: poll_s must be > 0, got {self.poll_s!r}")
        if not self.reads:
            raise ValueError(f"device {self.name}: a poll needs at least one read")
        for n in self.reads:
            read_reply_bytes(n)

    def cycle_s(self, line: LineTiming, turnaround_s: float) -> float:
        return sum(line.read_s(n, turnaround_s) for n in self.reads)


@dataclass(frozen=True, slots=True)
class DeviceCapacity:
    name: str
    poll_s: float            # requested interval
    cycle_s: float           # wire time of one poll
    expected_period_s: float  # interval the bus can give it

    @property
    def late_by_s(self) -> float:
        return max(0.0, self.expected_period_s - self.poll_s)


@dataclass(frozen=True, slots=True)
class CapacityReport:
    bus: str
    line: LineTiming
    turnaround_s: float
    demand: float                      # wire seconds asked for per second (> 1: over-subscribed)
    devices: tuple[DeviceCapacity, ...]

    @property
    def oversubscribed(self) -> bool:
        return self.demand > 1.0

    @property
    def late(self) -> tuple[DeviceCapacity, ...]:
        return tuple(d for d in self.devices if d.late_by_s > 1e-9)

    def warnings(self) -> list[str]:
        out = []
        for d in self.late:
            out.append(
                f"bus {self.bus} ({self.line}) is over-subscribed ({self.demand:.0%} of its wire time): device "
                f"{d.name} asks for a poll every {d.poll_s:g} s but will get one every {d.expected_period_s:.3g} s "
                f"(late by {d.late_by_s:.3g} s; one poll = {d.cycle_s * 1000:.1f} ms on the wire at "
                f"{self.turnaround_s * 1000:g} ms turnaround)")
        return out

    def log(self, logger: logging.Logger = log) -> None:
        """One WARNING per late device, one INFO line otherwise."""
        lines = self.warnings()
        for text in lines:
            logger.warning("%s", text)
        if not lines:
            logger.info("bus %s (%s): polls need %.0f%% of the wire time", self.bus, self.line, self.demand * 100)

    def as_dict(self) -> dict[str, object]:
        return {"bus": self.bus, "line": str(self.line), "turnaround_s": self.turnaround_s,
                "demand": round(self.demand, 4), "oversubscribed": self.oversubscribed,
                "devices": [{"name": d.name, "poll_s": d.poll_s, "cycle_s": round(d.cycle_s, 6),
                             "expected_period_s": round(d.expected_period_s, 6),
                             "late_by_s": round(d.late_by_s, 6)} for d in self.devices]}


def capacity_report(
    bus: str, line: LineTiming, loads: Sequence[DeviceLoad], turnaround_s: float = DEFAULT_TURNAROUND_S
) -> CapacityReport:
    """Predict each device's achievable interval on a serialised bus (see the module docstring)."""
    if not loads:
        raise ValueError(f"bus {bus!r}: no devices to assess")
    cycles = {d.name: d.cycle_s(line, turnaround_s) for d in loads}
    demand = sum(cycles[d.name] / d.poll_s for d in loads)
    late = {d.name for d in loads}
    period = 0.0
    while late:
        on_time_share = sum(cycles[d.name] / d.poll_s for d in loads if d.name not in late)
        period = sum(cycles[n] for n in late) / max(1e-12, 1.0 - on_time_share)
        leaving = {d.name for d in loads if d.name in late and d.poll_s >= period}
        if not leaving:
            break
        late -= leaving
    devices = tuple(
        DeviceCapacity(d.name, d.poll_s, cycles[d.name], period if d.name in late else d.poll_s) for d in loads)
    return CapacityReport(bus, line, turnaround_s, demand, devices)
