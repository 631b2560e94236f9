"""Serial driver for the Vaisala WXT530 in ASCII or NMEA mode: poll ``0R0``, decode, map to points.

The port is opened with pyserial (which sets the line: baud, parity, stop bits) and then read
without blocking the event loop: the file descriptor goes to ``loop.add_reader`` and bytes are cut
into lines as they arrive. Works the same on a USB-RS485 adapter and on a pty (the simulator).

pyserial/OS errors become LinkError here and nowhere else; a reply that never comes is
DeviceTimeout; lines that arrive but cannot be decoded are FrameError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import serial

from core.errors import CommandRefused, DeviceTimeout, FrameError, LinkError
from core.reading import Quality, Reading
from drivers.wxt_serial import nmea
from drivers.wxt_serial.codec import Measurement, is_reply_to, parse_composite, poll_command
from drivers.wxt_serial.settings import COMMANDS, WxtSerialSettings

__all__ = ["WxtSerialDriver"]

MAX_LINE = 1024


class WxtSerialDriver:
    """One WXT530 on its own serial line (the WXT is usually alone on its port)."""

    COMMANDS = COMMANDS  # the kind's commands, declared once in drivers/wxt_serial/settings.py

    def __init__(self, settings: WxtSerialSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.name = settings.name
        self.settings = settings
        self._clock = clock
        self._serial: serial.Serial | None = None
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._arrived = asyncio.Event()
        self._link_error: str | None = None

    # --- transport ---------------------------------------------------------------------------
    async def open(self) -> None:
        if self._serial is not None:
            return
        s = self.settings
        try:
            self._serial = serial.Serial(
                port=s.port, baudrate=s.baudrate, bytesize=s.bytesize, parity=s.parity,
                stopbits=s.stopbits, timeout=0, write_timeout=0,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"{self.name}: cannot open {s.port}: {exc}") from exc
        self._link_error = None
        asyncio.get_running_loop().add_reader(self._serial.fileno(), self._on_readable)

    async def close(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(port.fileno())
        with contextlib.suppress(serial.SerialException, OSError):
            port.close()

    def _on_readable(self) -> None:
        assert self._serial is not None
        try:
            chunk = os.read(self._serial.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the adapter was unplugged / the pty peer went away
            self._link_error = str(exc)
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
            self._arrived.set()
            return
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end]).strip(b"\r\x00 ")
            del self._buffer[: end + 1]
            if line:
                self._lines.append(line)
        if len(self._buffer) > MAX_LINE:  # noise without line ends: drop it, keep as one bad line
            self._lines.append(bytes(self._buffer[:80]))
            self._buffer.clear()
        self._arrived.set()

    async def _send(self, data: bytes) -> None:
        if self._serial is None:
            raise LinkError(f"{self.name}: port is not open")
        if self._link_error:
            raise LinkError(f"{self.name}: {self.settings.port}: {self._link_error}")
        self._lines.clear()
        self._buffer.clear()
        view = memoryview(data)
        deadline = time.monotonic() + self.settings.timeout_s
        while view:
            try:
                view = view[os.write(self._serial.fileno(), view):]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeviceTimeout(f"{self.name}: output to {self.settings.port} blocked") from None
                await asyncio.sleep(0.005)
            except OSError as exc:
                raise LinkError(f"{self.name}: write to {self.settings.port} failed: {exc}") from exc

    async def _next_line(self, deadline: float) -> bytes | None:
        """The next received line, or None when the (monotonic) deadline passes."""
        while not self._lines:
            if self._link_error:
                raise LinkError(f"{self.name}: {self.settings.port}: {self._link_error}")
            self._arrived.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        return self._lines.pop(0)

    async def _transact(self, command: bytes, accept: Callable[[str], bool]) -> str:
        """Send one command; return the first line `accept` takes. Other lines are noise."""
        await self._send(command)
        deadline = time.monotonic() + self.settings.timeout_s
        noise: list[bytes] = []
        while (raw := await self._next_line(deadline)) is not None:
            text = raw.decode("ascii", errors="replace")
            if accept(text):
                return text
            noise.append(raw)
        if noise:
            raise FrameError(f"{self.name}: no valid reply to {command.strip()!r}; got {noise[-1][:60]!r}")
        raise DeviceTimeout(f"{self.name}: no reply to {command.strip()!r} within {self.settings.timeout_s}s")

    # --- protocol ----------------------------------------------------------------------------
    async def _poll_ascii(self) -> dict[str, Measurement]:
        address = self.settings.address
        line = await self._transact(poll_command(address), lambda t: is_reply_to(t, address))
        return dict(parse_composite(line).fields)

    async def _poll_nmea(self) -> dict[str, Measurement]:
        await self._send(poll_command(self.settings.address))
        s = self.settings
        overall = deadline = time.monotonic() + s.timeout_s
        found: dict[str, Measurement] = {}
        errors: list[str] = []
        while (raw := await self._next_line(deadline)) is not None:
            try:
                for m in nmea.decode(raw):
                    found.setdefault(m.code, m)
            except FrameError as exc:
                errors.append(str(exc))
                continue
            if found:  # a reply is several sentences: it is complete once the line goes quiet
                deadline = min(overall, time.monotonic() + s.quiet_s)
        if found:
            return found
        if errors:
            raise FrameError(f"{self.name}: no valid NMEA sentence in reply: {errors[-1]}")
        raise DeviceTimeout(f"{self.name}: no reply to 0R0 within {s.timeout_s}s")

    async def read(self, points: Sequence[str] | None = None) -> list[Reading]:
        wanted = list(points) if points is not None else list(self.settings.read_points)
        found = await (self._poll_nmea() if self.settings.mode == "nmea" else self._poll_ascii())
        ts = self._clock()
        out = []
        for point in wanted:
            m = found.get(point)
            if m is None:
                out.append(Reading(self.name, point, None, "", ts, Quality.COMM_FAILURE, text="not in the reply"))
            else:
                out.append(Reading(self.name, point, m.value, m.unit, ts, m.quality, text=m.note))
        return out

    async def write(self, command: str, args: Mapping[str, Any]) -> None:
        a = self.settings.address
        if command == "reset_rain":
            await self._transact(f"{a}XZRU\r\n".encode(), lambda t: t.startswith(f"{a}TX,"))
        elif command == "set_polled_mode":
            reply = await self._transact(f"{a}XU,M=P\r\n".encode(), lambda t: t.startswith(f"{a}XU,"))
            if ",M=P" not in reply:
                raise FrameError(f"{self.name}: device did not confirm polled mode: {reply[:60]!r}")
        else:
            raise CommandRefused(f"{self.name}: unknown command {command!r}; known: {', '.join(self.COMMANDS)}")

