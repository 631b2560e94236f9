"""A parking lot's RS-485 line on a pty: bay detectors, lot counters, LED-485 displays, Alpha signs.

The simulator owns the pty master; the driver opens `sim.port` (the slave path) with pyserial
exactly as it would open /dev/ttyUSB1. Its layout is a parking device's settings (the same
[[device]] keys), so the simulated units and registers are the ones the config names.

On the line, as on a real one:
- Modbus RTU: FC03 reads detector/counter registers; an LED-485 unit takes FC06 at 0x0000 (int16
  shown) and FC16 at 0x0080 (raw segments) and echoes the write; a wrong register is exception 02;
  a unit nobody has, a bad CRC, or the wrong baud rate (read back from the pty's termios) meets
  silence. A frame left half-sent is dropped when the line has been quiet for 50 ms.
- Alpha frames (NUL.. SOH .. EOT) are taken by the signs at that address (or all, for "00"),
  and never answered.
What a sign shows is decoded from the bytes the driver sent: `shows(sign)`. `power_cycle()`
blanks every sign (the LED-485 forgets its value, the test's Alpha sign its text).

Faults (`sim.fault`): SILENCE (nobody answers), GARBAGE (random bytes instead of replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import random
import termios
import time
import tty
from pathlib import Path
from typing import Any

from core.errors import FrameError
from drivers.parking import codec
from drivers.parking.settings import ParkingSettings, Zone

__all__ = ["ParkingSim", "Fault", "load_layout", "DEMO_LAYOUT"]

_SPEEDS = {getattr(termios, f"B{b}"): b for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)}
QUIET_S = 0.05

DEMO_LAYOUT = """
name = "lot-demo"
port = "sim"
[[zones]]
name = "A"
detectors = [{ unit = 2, register = 0, count = 8 }]
[[zones]]
name = "B"
capacity = 20
counter = { unit = 3, entries = 0, exits = 1 }
[[signs]]
type = "led485"
unit = 10
zone = "A"
[[signs]]
type = "alpha"
address = "01"
"""


class Fault(enum.Enum):
    NONE = "none"
    SILENCE = "silence"
    GARBAGE = "garbage"


class ParkingSim:
    def __init__(self, layout: ParkingSettings, *, turnaround_s: float = 0.005, seed: int = 0) -> None:
        self.layout = layout
        self.turnaround_s = turnaround_s
        self.fault = Fault.NONE
        self.regs: dict[tuple[int, int], int] = {}
        for z in layout.zones:
            for d in z.detectors:
                self.regs.update({(d.unit, d.register + i): 0 for i in range(d.count)})
            if z.counter is not None:
                self.regs[(z.counter.unit, z.counter.entries)] = self.regs[(z.counter.unit, z.counter.exits)] = 0
        self.led: dict[int, str] = {s.unit: "" for s in layout.signs if s.type == "led485"}
        self.alpha: dict[str, dict[str, str]] = {s.address: {} for s in layout.signs if s.type == "alpha"}
        self.requests = self.bad_frames = self.line_mismatches = self.writes = 0
        self._rng = random.Random(seed)
        self._inbox = bytearray()
        self._last_rx = 0.0
        self._master = self._slave = -1
        self.port = ""

    # --- the pty ---------------------------------------------------------------------------------
    async def start(self) -> ParkingSim:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[4] = attrs[5] = next(k for k, v in _SPEEDS.items() if v == self.layout.baudrate)
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        asyncio.get_running_loop().add_reader(self._master, self._on_readable)
        return self

    async def stop(self) -> None:
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            os.close(self._slave)
            self._master = self._slave = -1

    async def __aenter__(self) -> ParkingSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_readable(self) -> None:
        try:
            chunk = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        now = time.monotonic()
        if now - self._last_rx > QUIET_S:
            self._inbox.clear()  # the line was quiet: whatever was half-sent is gone
        self._last_rx = now
        self._inbox += chunk
        while self._inbox and self._take():
            pass

    def _take(self) -> bool:
        """Handle the frame at the start of the inbox; False while it is incomplete."""
        buf = bytes(self._inbox)
        if buf[0] == 0:
            end = buf.find(codec.EOT)
            if end < 0:
                return False
            del self._inbox[: end + 1]
            try:
                self._alpha(codec.decode_alpha(buf[: end + 1]))
            except FrameError:
                self.bad_frames += 1
            return True
        try:
            need = codec.request_length(buf)
            if need is None or len(buf) < need:
                return False
            del self._inbox[:need]
            reply = self._modbus(codec.decode_request(buf[:need]))
        except FrameError:
            self.bad_frames += 1
            self._inbox.clear()
            return False
        if reply:
            asyncio.get_running_loop().call_later(self.turnaround_s, self._emit, reply)
        return True

    def _emit(self, data: bytes) -> None:
        if self._master >= 0:
            with contextlib.suppress(OSError):
                os.write(self._master, data)

    def _line_ok(self) -> bool:
        if _SPEEDS.get(termios.tcgetattr(self._slave)[4]) == self.layout.baudrate:
            return True
        self.line_mismatches += 1
        return False

    # --- the devices -----------------------------------------------------------------------------
    def _alpha(self, frame: codec.AlphaFrame) -> None:
        if not self._line_ok():
            return
        for address, files in self.alpha.items():
            if frame.address in ("00", address) and frame.command == "A":
                files[frame.label] = frame.data
                self.writes += 1

    def _modbus(self, req: codec.ModbusRequest) -> bytes:
        self.requests += 1
        units = {u for u, _ in self.regs} | set(self.led)
        if req.unit not in units or self.fault is Fault.SILENCE or not self._line_ok():
            return b""
        if self.fault is Fault.GARBAGE:
            return bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(3, 20)))
        if req.unit in self.led:
            return self._display(req)
        if req.function != codec.FC_READ:
            return codec.exception_reply(req.unit, req.function, 0x01)
        keys = [(req.unit, req.address + i) for i in range(req.count)]
        if any(k not in self.regs for k in keys):
            return codec.exception_reply(req.unit, req.function, 0x02)
        return codec.read_reply(req.unit, [self.regs[k] for k in keys])

    def _display(self, req: codec.ModbusRequest) -> bytes:
        unit, fc = req.unit, req.function
        if fc == codec.FC_WRITE_ONE and req.address in (0x0000, 0x0002, 0x0003, 0x0004):
            if req.address == 0x0000:
                value = req.values[0]
                self.led[unit] = str(value - 0x10000 if value >= 0x8000 else value)
                self.writes += 1
            return codec.write_reply(req)
        if fc == codec.FC_WRITE_MANY and req.address == 0x0080 and 1 <= req.count <= 3:
            try:
                self.led[unit] = codec.decode_segments(req.values)
            except FrameError:
                return codec.exception_reply(unit, fc, 0x03)
            self.writes += 1
            return codec.write_reply(req)
        return codec.exception_reply(unit, fc, 0x02 if fc in (codec.FC_WRITE_ONE, codec.FC_WRITE_MANY) else 0x01)

    # --- the lot -------------------------------------------------------------------------------
    def _zone(self, name: str) -> Zone:
        zone = self.layout.zone(name)
        if zone is None:
            raise ValueError(f"no zone {name!r}; zones: {', '.join(z.name for z in self.layout.zones)}")
        return zone

    def _bay(self, zone: str, bay: int) -> tuple[int, int]:
        z = self._zone(zone)
        if not z.detectors or not 1 <= bay <= z.bays:
            raise ValueError(f"zone {zone!r} has bays 1..{z.bays}, not {bay}")
        for block in z.detectors:
            if bay <= block.count:
                return block.unit, block.register + bay - 1
            bay -= block.count
        raise AssertionError("unreachable")

    def park(self, zone: str, bay: int, value: int = 1) -> None:
        """A car arrives on a bay (value 1), leaves (0), or the detector reports a fault code."""
        self.regs[self._bay(zone, bay)] = value

    def pass_gate(self, zone: str, *, entries: int = 0, exits: int = 0) -> None:
        c = self._zone(zone).counter
        if c is None:
            raise ValueError(f"zone {zone!r} has detectors, not a counter")
        for reg, n in ((c.entries, entries), (c.exits, exits)):
            self.regs[(c.unit, reg)] = (self.regs[(c.unit, reg)] + n) % 0x10000

    def shows(self, sign: str) -> str:
        """The text the named sign lights now ("" when blank)."""
        s = next((s for s in self.layout.signs if s.name == sign), None)
        if s is None:
            raise ValueError(f"no sign {sign!r}; signs: {', '.join(x.name for x in self.layout.signs)}")
        return self.led[s.unit] if s.type == "led485" else self.alpha[s.address].get(s.label, "")

    def power_cycle(self) -> None:
        self.led = {unit: "" for unit in self.led}
        self.alpha = {address: {} for address in self.alpha}

    def status(self) -> dict[str, Any]:
        return {"fault": self.fault.value, "requests": self.requests, "writes": self.writes,
                "bad_frames": self.bad_frames, "line_mismatches": self.line_mismatches,
                "signs": {s.name: self.shows(s.name) for s in self.layout.signs}}


def load_layout(path: Path | None) -> ParkingSettings:
    """A parking [[device]] table (without `kind`; `port` optional) from a TOML file, or the demo."""
    import tomllib

    from core.config_reader import Table
    from drivers.kind import ParseContext
    from drivers.parking.settings import parse

    data = tomllib.loads(DEMO_LAYOUT) if path is None else tomllib.loads(path.read_text(encoding="utf-8"))
    data.setdefault("port", "sim")
    table = Table(data, str(path or "demo layout"))
    settings = parse(table, ParseContext(base_dir=path.parent if path else Path(".")))
    table.reject_unknown()
    return settings
