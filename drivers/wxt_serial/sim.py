"""A WXT530 on a pseudo-terminal: answers ``0R0``, ``0XU,M=P``, ``0XZRU`` in ASCII or NMEA mode.

The simulator owns the pty master; the driver under test opens `sim.port` (the slave path) with
pyserial exactly as it would open /dev/ttyUSB0. Data come from the shared WeatherModel.

Faithful details: the device answers only its own address (others stay silent, as on RS-485);
it answers after a turnaround delay; if the line's baud rate (read back from the pty's termios)
differs from the device's, it answers with the garbage a UART sees at the wrong speed. A pty
keeps the baud rate and stop bits a client sets but not parity or character size, so those
cannot be checked here.

Faults (set `sim.fault`): SILENCE (no answer), GARBAGE (random bytes), CORRUPT_FIELDS (bytes lost
across a field boundary, ``Dn=0m=032D``), BAD_CHECKSUM (NMEA checksum off by one).
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
from collections.abc import Callable

from drivers.physics.weather import WeatherModel
from drivers.wxt_serial.codec import format_composite
from drivers.wxt_serial.nmea import build_sentence

__all__ = ["WxtSerialSim", "Fault"]

_SPEEDS = {getattr(termios, f"B{b}"): b for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)}


class Fault(enum.Enum):
    NONE = "none"
    SILENCE = "silence"
    GARBAGE = "garbage"
    CORRUPT_FIELDS = "corrupt_fields"
    BAD_CHECKSUM = "bad_checksum"


class WxtSerialSim:
    def __init__(
        self,
        model: WeatherModel | None = None,
        *,
        address: str = "0",
        protocol: str = "ascii",
        baudrate: int | None = None,
        clock: Callable[[], float] = time.time,
        turnaround_s: float = 0.02,
        seed: int = 0,
    ) -> None:
        if protocol not in ("ascii", "nmea"):
            raise ValueError(f"protocol must be 'ascii' or 'nmea', got {protocol!r}")
        self.clock = clock
        self.model = model or WeatherModel(seed=seed, start=clock())
        self.address = address
        self.protocol = protocol
        self.baudrate = baudrate or (19200 if protocol == "ascii" else 4800)
        self.turnaround_s = turnaround_s
        self.fault = Fault.NONE
        self.polled_mode = False
        self.requests: list[str] = []
        self._rng = random.Random(seed)
        self._rain_base = self.model.state.rain_total_mm
        self._master = self._slave = -1
        self.port = ""
        self._inbox = bytearray()

    async def start(self) -> WxtSerialSim:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        speed = next(k for k, v in _SPEEDS.items() if v == self.baudrate)
        attrs[4] = attrs[5] = speed
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

    async def __aenter__(self) -> WxtSerialSim:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- line handling ---------------------------------------------------------------------------
    def _line_speed(self) -> int | None:
        return _SPEEDS.get(termios.tcgetattr(self._slave)[4])

    def _on_readable(self) -> None:
        try:
            self._inbox += os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        while (end := self._inbox.find(b"\n")) >= 0:
            command = bytes(self._inbox[:end]).strip(b"\r").decode("ascii", errors="replace")
            del self._inbox[: end + 1]
            self.requests.append(command)
            reply = self._answer(command)
            if reply:
                asyncio.get_running_loop().call_later(self.turnaround_s, self._emit, reply)

    def _emit(self, data: bytes) -> None:
        if self._master >= 0:
            with contextlib.suppress(OSError):
                os.write(self._master, data)

    def _answer(self, command: str) -> bytes:
        a = self.address
        if not command.startswith(a) or self.fault is Fault.SILENCE:
            return b""  # another address, or a dead device: RS-485 silence
        if self._line_speed() != self.baudrate or self.fault is Fault.GARBAGE:
            return bytes(self._rng.randrange(256) for _ in range(self._rng.randrange(8, 40))) + b"\r\n"
        if command == f"{a}R0":
            lines = self._nmea() if self.protocol == "nmea" else [self._composite()]
            return "".join(line + "\r\n" for line in lines).encode("ascii")
        if command == f"{a}XU,M=P":
            self.polled_mode = True
            return (self._settings() + "\r\n").encode()
        if command == f"{a}XU":
            return (self._settings() + "\r\n").encode()
        if command == f"{a}XZRU":
            self._rain_base = self.model.advance(self.clock()).rain_total_mm
            return f"{a}TX,Rain reset\r\n".encode()
        return f"{a}TX,Unknown cmd\r\n".encode()

    def _settings(self) -> str:
        mode = "P" if self.polled_mode else "A"
        return (f"{self.address}XU,A={self.address},M={mode},T=0,C=2,I=0,B={self.baudrate},D=8,P=N,S=1,"
                f"L=25,N=WXT530,V=3.86")

    # --- messages ----------------------------------------------------------------------------
    def values(self) -> dict[str, float]:
        """What the instrument measures now, per WXT field code (also what tests compare with)."""
        w = self.model.advance(self.clock())
        spread = 15.0 + 2.0 * w.wind_speed_ms
        return {
            "Dn": (w.wind_dir_deg - spread) % 360, "Dm": w.wind_dir_deg % 360, "Dx": (w.wind_dir_deg + spread) % 360,
            "Sn": 0.6 * w.wind_speed_ms, "Sm": w.wind_speed_ms, "Sx": w.wind_gust_ms,
            "Ta": w.temperature_c, "Ua": w.humidity_pct, "Pa": w.pressure_hpa,
            "Rc": w.rain_total_mm - self._rain_base, "Ri": w.rain_rate_mmh,
            "Th": w.temperature_c + 0.4, "Vs": 12.1, "Vr": 3.498,
        }

    def _composite(self) -> str:
        v = self.values()
        calm = v["Sm"] < 0.05  # the WXT reports direction invalid in calm air
        fields: list[tuple[str, float | None, str]] = [
            ("Dn", None if calm else v["Dn"], "D"), ("Dm", None if calm else v["Dm"], "D"),
            ("Dx", None if calm else v["Dx"], "D"), ("Sn", v["Sn"], "M"), ("Sm", v["Sm"], "M"),
            ("Sx", v["Sx"], "M"), ("Ta", v["Ta"], "C"), ("Ua", v["Ua"], "P"), ("Pa", v["Pa"], "H"),
            ("Rc", v["Rc"], "M"), ("Rd", 0.0, "s"), ("Ri", v["Ri"], "M"), ("Hc", 0.0, "M"),
            ("Hd", 0.0, "s"), ("Hi", 0.0, "M"), ("Rp", v["Ri"], "M"), ("Hp", 0.0, "M"),
            ("Th", v["Th"], "C"), ("Vh", 0.0, "N"), ("Vs", v["Vs"], "V"), ("Vr", v["Vr"], "V"),
        ]
        line = format_composite(self.address, fields, text={"Id": "Ant"})
        if self.fault is Fault.CORRUPT_FIELDS:
            # lose the bytes between the first field's first digit and the next field's code letter
            head, first, second, rest = line.split(",", 3)
            line = ",".join([head, first[:4] + second[1:], rest])
        return line

    def _nmea(self) -> list[str]:
        v = self.values()
        wind = ["A", f"{v['Dn']:.0f}", "D", "0", "A", f"{v['Dm']:.0f}", "D", "1", "A", f"{v['Dx']:.0f}", "D", "2",
                "S", f"{v['Sn']:.1f}", "M", "0", "S", f"{v['Sm']:.1f}", "M", "1", "S", f"{v['Sx']:.1f}", "M", "2"]
        ptu = ["C", f"{v['Ta']:.1f}", "C", "0", "H", f"{v['Ua']:.1f}", "P", "0", "P", f"{v['Pa'] / 1000:.4f}", "B", "0"]
        rain = ["V", f"{v['Rc']:.2f}", "M", "0", "R", f"{v['Ri']:.1f}", "M", "0"]
        mwv = [f"{v['Dm']:05.1f}", "R", f"{v['Sm']:04.1f}", "M", "A"]
        lines = [build_sentence("WI", "XDR", wind), build_sentence("WI", "XDR", ptu),
                 build_sentence("WI", "XDR", rain), build_sentence("WI", "MWV", mwv)]
        if self.fault is Fault.BAD_CHECKSUM:
            lines = [s[:-2] + f"{(int(s[-2:], 16) + 1) % 256:02X}" for s in lines]
        return lines
