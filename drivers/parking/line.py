"""The parking device's RS-485 line: pyserial sets the line, then the file descriptor is read without
blocking the event loop (`loop.add_reader`, as drivers/wxt_serial.py does). Works the same on a
USB-RS485 adapter and on a pty (the simulator).

One master, one request at a time (the agent's line lock serialises commands with polls). Modbus
replies are cut by their length (codec.reply_length); after every frame the line stays quiet for
t3.5 so that the next frame is not glued to it. pyserial/OS errors become LinkError here and
nowhere else; no reply in time is DeviceTimeout; bytes that are no valid reply are FrameError.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import serial

from core.errors import DeviceTimeout, FrameError, LinkError
from drivers.parking import codec

__all__ = ["SerialLine"]


class SerialLine:
    def __init__(self, name: str, port: str, *, baudrate: int, parity: str, stopbits: int, timeout_s: float) -> None:
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.timeout_s = timeout_s
        self.gap_s = max(0.00175, 38.5 / baudrate)  # t3.5 of 11-bit characters; 1.75 ms above 19200
        self._serial: serial.Serial | None = None
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._link_error: str | None = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    async def open(self) -> None:
        if self._serial is not None:
            return
        try:
            self._serial = serial.Serial(port=self.port, baudrate=self.baudrate, bytesize=8, parity=self.parity,
                                         stopbits=self.stopbits, timeout=0, write_timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"{self.name}: cannot open {self.port}: {exc}") from exc
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
        except OSError as exc:  # EIO: the adapter was unplugged / the pty's far side closed
            self._link_error = str(exc)
            asyncio.get_running_loop().remove_reader(self._serial.fileno())
            self._arrived.set()
            return
        if len(self._buffer) < 4096:
            self._buffer += chunk
        self._arrived.set()

    def _check_link(self) -> None:
        if self._serial is None:
            raise LinkError(f"{self.name}: port {self.port} is not open")
        if self._link_error:
            raise LinkError(f"{self.name}: {self.port}: {self._link_error}")

    async def send(self, data: bytes) -> None:
        """Put one frame on the line (and the quiet gap after it); nothing is expected back."""
        self._check_link()
        assert self._serial is not None
        view = memoryview(data)
        deadline = time.monotonic() + self.timeout_s
        while view:
            try:
                view = view[os.write(self._serial.fileno(), view):]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DeviceTimeout(f"{self.name}: output to {self.port} blocked") from None
                await asyncio.sleep(0.005)
            except OSError as exc:
                raise LinkError(f"{self.name}: write to {self.port} failed: {exc}") from exc
        await asyncio.sleep(self.gap_s + len(data) * 11 / self.baudrate)

    async def transact(self, request: bytes) -> tuple[int, ...]:
        """Send one Modbus request and decode its reply (registers, or () for a write)."""
        self._buffer.clear()
        await self.send(request)
        deadline = time.monotonic() + self.timeout_s
        function = request[1]
        while True:
            self._check_link()
            try:
                need = codec.reply_length(bytes(self._buffer), function)
            except FrameError as exc:
                raise FrameError(f"{self.name}: unit {request[0]}: {exc}") from None
            if need is not None and len(self._buffer) >= need:
                frame = bytes(self._buffer[:need])
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if self._buffer:
                    head = bytes(self._buffer[:16]).hex(" ")
                    raise FrameError(f"{self.name}: unit {request[0]}: incomplete reply {head}")
                raise DeviceTimeout(f"{self.name}: unit {request[0]} did not answer within {self.timeout_s}s")
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        await asyncio.sleep(self.gap_s)
        try:
            return codec.decode_reply(frame, request)
        except FrameError as exc:
            raise FrameError(f"{self.name}: {exc}") from None
