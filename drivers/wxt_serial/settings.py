"""Settings of a Vaisala WXT530 on its own serial line (ASCII or NMEA 0183): one frozen object and its parser.

    port, mode = "ascii" | "nmea", address, baudrate, parity, bytesize, stopbits, timeout_ms
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.config_reader import Table
from drivers.kind import ParseContext
from drivers.wxt_serial.codec import UNITS as WXT_UNITS
from drivers.settings_rules import check_points, common, read_timeout


#: commands the driver accepts in write()
COMMANDS = ("reset_rain", "set_polled_mode")
WXT_POINTS = frozenset(WXT_UNITS) | {"Td", "Pa_inHg", "Dm_magnetic", "Sm_knot"}  # NMEA MDA adds the last four



@dataclass(frozen=True, slots=True)
class WxtSerialDeviceConfig:
    kind: ClassVar[str] = "wxt_serial"
    name: str
    port: str
    mode: str = "ascii"
    address: str = "0"
    baudrate: int = 19200
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    timeout_s: float = 1.0
    poll_s: float = 1.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

def parse(t: Table, ctx: ParseContext) -> WxtSerialDeviceConfig:
    c = common(t, "wxt_serial", COMMANDS, 1.0)
    mode = t.str("mode", "ascii", choices=("ascii", "nmea"))
    cfg = WxtSerialDeviceConfig(
        port=t.str("port", expected="a serial device path, e.g. /dev/ttyUSB0"), mode=mode,
        address=t.str("address", "0", pattern=re.compile(r"^[0-9A-Za-z]$"), expected="one character 0-9, A-Z or a-z"),
        baudrate=t.int("baudrate", 19200 if mode == "ascii" else 4800, min=1200, max=115200),
        parity=t.str("parity", "N", choices=("N", "E", "O")), bytesize=t.int("bytesize", 8, min=7, max=8),
        stopbits=t.int("stopbits", 1, min=1, max=2), timeout_s=read_timeout(t, 1000), **c)
    if cfg.baudrate not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
        raise t.error("baudrate", "not a rate the WXT530 supports", cfg.baudrate,
                      "one of 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200")
    if cfg.timeout_s <= 0.15:
        raise t.error("timeout_ms", "too short for a serial reply", int(cfg.timeout_s * 1000), "more than 150")
    check_points(t, cfg.points, WXT_POINTS.__contains__, "WXT field codes: " + ", ".join(sorted(WXT_POINTS)))
    return cfg

