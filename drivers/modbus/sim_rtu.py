"""Modbus RTU on a pty: one simulated RS-485 bus with several slaves and the real wire timing.

The simulator holds the master side of a pty pair; a client (our driver, mbpoll, a scanner) opens
`path`. Faithful to a real line:
- frames are split by t3.5 of silence; a frame with a bad CRC, or for an absent unit, meets silence;
- replies are paced to the wire time at the configured baud: request on the wire, the t3.5 that
  ends it, the slave's turnaround, then the reply on the wire (t3.5 = 1.75 ms above 19200 baud);
- a request that starts less than t3.5 after the previous reply ended is counted (gap_violations)
  and, with strict_gaps, dropped: on a real line the two frames run together and nobody reads them;
- the master's line settings are checked through the pty's termios (baud, stop bits, odd parity):
  at the wrong baud a real slave sees only garbage, so the simulated one stays silent
  (line_mismatches). Linux clears PARENB on ptys, so even parity cannot be told from none;
- noise (a slave fault): random bytes on the line between the request and the reply, set apart from
  the reply by t3.5 of silence;
- every slave hears every frame: one with `deaf_s` goes deaf after a request to, or a reply from,
  another unit, and a request reaching it while deaf meets silence (`deaf_drops`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pty
import random
import termios
import time
import tty
from collections.abc import Mapping
from typing import Any, Protocol


class SimSlave(Protocol):
    """What the bus needs of a slave (drivers.modbus.sim_slave.SimSlave is the one we ship)."""

    unit: int

    ignored: int  # requests dropped while deaf (counted by the bus)

    def overhear(self, unit: int, at: float) -> None: ...

    def deaf(self, at: float) -> bool: ...

    def handle(self, pdu: bytes) -> Any: ...

    async def answer(self, pdu: bytes) -> Any: ...

__all__ = ["RtuBus", "crc16", "garbage"]
log = logging.getLogger(__name__)


def crc16(data: bytes) -> int:
    """Modbus CRC16 (poly 0xA001, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def garbage(length: int) -> bytes:
    return bytes(random.getrandbits(8) for _ in range(max(length, 5)))


_BAUD_FLAGS = {b: getattr(termios, f"B{b}") for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)}


class RtuBus:
    """One RS-485 bus on a pty: the sim holds the master side, a client opens `path`."""

    def __init__(
        self, slaves: Mapping[int, SimSlave], *, baudrate: int = 19200, parity: str = "N",
        stopbits: int = 1, bytesize: int = 8, turnaround_s: float = 0.003, strict_gaps: bool = False,
        check_line: bool = True,
    ) -> None:
        if parity not in ("N", "E", "O") or baudrate <= 0 or stopbits not in (1, 2):
            raise ValueError(f"bad line settings: baudrate={baudrate!r} parity={parity!r} stopbits={stopbits!r}")
        if not 0 <= turnaround_s <= 10:
            raise ValueError(f"turnaround_s must be 0..10 seconds, got {turnaround_s!r}")
        self.slaves = slaves
        self.baudrate, self.parity, self.stopbits = baudrate, parity, stopbits
        self.char_s = (1 + bytesize + (parity != "N") + stopbits) / baudrate
        self.t35 = 0.00175 if baudrate > 19200 else 3.5 * self.char_s
        self.turnaround_s = turnaround_s
        self.strict_gaps = strict_gaps
        self.check_line = check_line and baudrate in _BAUD_FLAGS
        self.bad_frames = 0       # bad CRC or too short: ignored
        self.gap_violations = 0   # requests that began < t3.5 after the previous reply ended
        self.line_mismatches = 0  # requests sent with other line settings: garbage to the slaves
        self.frames = 0           # requests the slaves could read
        self.deaf_drops = 0       # requests their slave did not hear (deaf after another unit's frame)
        self.path = ""
        self._master = self._slave_fd = -1
        self._rx = bytearray()
        self._rx_start = 0.0
        self._reply_end = 0.0     # when the last reply (or noise) left the wire
        self._timer: asyncio.TimerHandle | None = None
        self._frames: asyncio.Queue[tuple[bytes, float, bool]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self._master, self._slave_fd = pty.openpty()
        tty.setraw(self._slave_fd)  # we keep the slave side open so clients may come and go
        if self.check_line:  # the "cable" starts at the bus's settings: tools that set none match
            attrs = termios.tcgetattr(self._slave_fd)
            attrs[4] = attrs[5] = _BAUD_FLAGS[self.baudrate]
            attrs[2] = (attrs[2] & ~(termios.CSTOPB | termios.PARODD)) | (
                termios.CSTOPB if self.stopbits == 2 else 0) | (termios.PARODD if self.parity == "O" else 0)
            termios.tcsetattr(self._slave_fd, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave_fd)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._master, self._on_readable)
        self._worker = asyncio.create_task(self._work(), name=f"rtu-bus {self.path}")
        return self.path

    async def close(self) -> None:
        if self._worker is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        if self._timer:
            self._timer.cancel()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None
        os.close(self._master)
        os.close(self._slave_fd)

    def _line_ok(self) -> bool:
        """Does the master's side of the pty use this bus's baud, stop bits and odd/other parity?"""
        if not self.check_line:
            return True
        try:
            attrs = termios.tcgetattr(self._slave_fd)
        except termios.error:
            return True
        flags = attrs[2]
        return (attrs[4] == _BAUD_FLAGS[self.baudrate] and bool(flags & termios.CSTOPB) == (self.stopbits == 2)
                and bool(flags & termios.PARODD) == (self.parity == "O"))

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except OSError:  # EAGAIN, or EIO while no client side is open on some kernels
            return
        if not self._rx:
            self._rx_start = time.monotonic()
        self._rx += data
        if self._timer:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.t35, self._end_of_frame)

    def _end_of_frame(self) -> None:
        self._timer = None
        # The arrival time is taken when the loop sees the bytes (never early), so a gap measured
        # shorter than t3.5 really was shorter.
        glued = self._rx_start - self._reply_end < self.t35
        self._frames.put_nowait((bytes(self._rx), self._rx_start, glued))
        self._rx.clear()

    async def _work(self) -> None:
        while True:
            await self._serve(*await self._frames.get())

    async def _send(self, data: bytes, not_before: float) -> None:
        """Put bytes on the wire from `not_before`: the master sees them when the last one is out."""
        await asyncio.sleep(max(0.0, max(not_before, time.monotonic()) + len(data) * self.char_s - time.monotonic()))
        try:
            os.write(self._master, data)
        except BlockingIOError:
            log.warning("rtu bus %s: nobody reads the line, %d bytes dropped", self.path, len(data))
        self._reply_end = time.monotonic()

    async def _serve(self, frame: bytes, start: float, glued: bool) -> None:
        if glued:
            self.gap_violations += 1
            if self.strict_gaps:
                return  # ran into the previous frame on the wire: nobody can read it
        if not self._line_ok():
            self.line_mismatches += 1  # wrong baud or framing: the slaves see garbage
            return
        if len(frame) < 4 or crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
            self.bad_frames += 1  # a real slave ignores a frame it cannot trust
            return
        self.frames += 1
        unit, pdu = frame[0], frame[1:-2]
        target = self.slaves.get(unit)
        heard_at = start + len(frame) * self.char_s  # the end of the request on the wire
        for slave in self.slaves.values():
            if slave is not target:
                slave.overhear(unit, heard_at)
        if target is not None and target.deaf(start):
            target.ignored += 1
            self.deaf_drops += 1
            return
        if unit == 0:  # broadcast: writes are carried out, nobody answers
            for slave in self.slaves.values():
                if pdu[0] in (6, 16):
                    slave.handle(pdu)
            return
        if unit not in self.slaves:
            return  # absent unit: silence, the master times out
        ans = await self.slaves[unit].answer(pdu)
        if ans is None or ans.damage == "disconnect":
            return
        out = bytes([ans.unit]) + ans.pdu
        out += crc16(out).to_bytes(2, "little")
        if ans.damage == "crc_error":
            out = out[:-2] + bytes([out[-2] ^ 0xFF, out[-1] ^ 0x5A])
        elif ans.damage == "garbage":
            out = garbage(len(out))
        # request on the wire, the t3.5 gap that ends it, turnaround, then the reply on the wire
        ready = start + len(frame) * self.char_s + self.t35 + self.turnaround_s
        if ans.noise:
            await self._send(garbage(ans.noise)[:ans.noise], ready)
            ready = self._reply_end + self.t35
        await self._send(out, ready)
        for slave in self.slaves.values():  # the reply is a frame from another unit to the rest
            if slave.unit != ans.unit:
                slave.overhear(ans.unit, self._reply_end)
