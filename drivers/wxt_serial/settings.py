"""Settings of a Vaisala WXT530 on its own serial line (ASCII or NMEA 0183): one frozen object, its
rules and its parser. The driver takes this object; the config file and code that builds it
directly meet the same rules.

    port, mode = "ascii" | "nmea", address, baudrate, parity, bytesize, stopbits, timeout_ms

ASCII defaults to 19200 8N1, NMEA to 4800 8N1 (the device's own defaults).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import Table
from drivers.kind import ParseContext
from drivers.settings_rules import SettingError, check_points, common, construct, read_timeout
from drivers.wxt_serial.codec import UNITS as WXT_UNITS

__all__ = ["BAUD_RATES", "COMMANDS", "DEFAULT_POINTS", "WXT_POINTS", "WxtSerialSettings", "parse"]

#: commands the driver accepts in write()
COMMANDS = ("reset_rain", "set_polled_mode")
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
WXT_POINTS = frozenset(WXT_UNITS) | {"Td", "Pa_inHg", "Dm_magnetic", "Sm_knot"}  # NMEA MDA adds the last four
#: read when the config names no points
DEFAULT_POINTS = ("Dn", "Dm", "Dx", "Sn", "Sm", "Sx", "Ta", "Ua", "Pa", "Rc", "Rd", "Ri")
_ADDRESS = re.compile(r"^[0-9A-Za-z]$")


@dataclass(frozen=True, slots=True)
class WxtSerialSettings:
    kind: ClassVar[str] = "wxt_serial"
    name: str
    port: str
    mode: str = "ascii"              # "ascii" (composite 0R0) or "nmea" (0R0 answered as sentences)
    address: str = "0"
    baudrate: int = 19200
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    timeout_s: float = 1.0           # no reply within this -> DeviceTimeout
    quiet_s: float = 0.15            # NMEA: the reply is complete after this long without a line
    poll_s: float = 1.0
    points: tuple[str, ...] = ()     # empty: DEFAULT_POINTS
    allow_commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.port:
            raise SettingError("port", "must name a serial device", self.port, "a path, e.g. /dev/ttyUSB0")
        if not _ADDRESS.match(self.address):
            raise SettingError("address", "not a WXT address", self.address, "one character 0-9, A-Z or a-z")
        if self.mode not in ("ascii", "nmea"):
            raise SettingError("mode", "unknown value", self.mode, "one of ascii, nmea")
        if self.baudrate not in BAUD_RATES:
            raise SettingError("baudrate", "not a rate the WXT530 supports", self.baudrate,
                               "one of " + ", ".join(map(str, BAUD_RATES)))
        if self.bytesize not in (7, 8):
            raise SettingError("bytesize", "not a WXT character size", self.bytesize, "7 or 8")
        if self.parity not in ("N", "E", "O"):
            raise SettingError("parity", "unknown value", self.parity, "one of E, N, O")
        if self.stopbits not in (1, 2):
            raise SettingError("stopbits", "not a stop bit count", self.stopbits, "1 or 2")
        if not 0.15 < self.timeout_s <= 30:
            raise SettingError("timeout_ms", "too short for a serial reply" if self.timeout_s <= 0.15 else "too long",
                               round(self.timeout_s * 1000), "more than 150 and at most 30000")
        if not 0 < self.quiet_s < self.timeout_s:
            raise SettingError("quiet_s", "must be shorter than the timeout", self.quiet_s,
                               f"0 < quiet_s < {self.timeout_s}")
        unknown = [p for p in self.points if p not in WXT_POINTS]
        if unknown:
            raise SettingError("points", f"unknown point {unknown[0]!r}", unknown[0],
                               "WXT field codes: " + ", ".join(sorted(WXT_POINTS)))

    @property
    def read_points(self) -> tuple[str, ...]:
        """The points a poll reads: the configured ones, or the defaults."""
        return self.points or DEFAULT_POINTS


def parse(t: Table, ctx: ParseContext) -> WxtSerialSettings:
    c = common(t, "wxt_serial", COMMANDS, 1.0)
    mode = t.str("mode", "ascii", choices=("ascii", "nmea"))
    settings = construct(
        t, WxtSerialSettings, port=t.str("port", expected="a serial device path, e.g. /dev/ttyUSB0"), mode=mode,
        address=t.str("address", "0", pattern=_ADDRESS, expected="one character 0-9, A-Z or a-z"),
        baudrate=t.int("baudrate", 19200 if mode == "ascii" else 4800, min=1200, max=115200),
        parity=t.str("parity", "N", choices=("N", "E", "O")), bytesize=t.int("bytesize", 8, min=7, max=8),
        stopbits=t.int("stopbits", 1, min=1, max=2), timeout_s=read_timeout(t, 1000), **c)
    check_points(t, settings.points, WXT_POINTS.__contains__, "WXT field codes: " + ", ".join(sorted(WXT_POINTS)))
    return settings
