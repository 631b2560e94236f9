"""Settings of a `parking` device: one RS-485 line with the lot's detectors, counters and signs.

    [[device]]
    name = "lot-north"
    kind = "parking"
    port = "/dev/ttyUSB1"        # the line this device owns alone (no [[bus]] and no other device on it)
    baudrate = 9600              # 1200..115200; the LED-485's default line is 9600 8N1
    parity = "N"                 # N, E or O
    stopbits = 1                 # 1 or 2
    timeout_ms = 300             # a Modbus reply later than this is a timeout (20..5000)
    poll_s = 2                   # read detectors and counters this often
    refresh_s = 60               # rewrite every sign at least this often (signs forget on power cycle)
    points = []                  # default: all (see `point_names`)
    allow_commands = ["set_sign_text", "clear_sign_text", "set_capacity", "reset_count"]

    [[device.zones]]             # 1..32 zones, each with detectors OR a counter
    name = "A"                   # 1-16 of letters, digits, '_' or '-'
    capacity = 8                 # 0..32767 (default with detectors: the number of bays)
    detectors = [{ unit = 2, register = 0, count = 8 }]   # FC03, one register per bay: 0 free, 1 occupied,
                                                          # anything else a faulty bay (counted occupied)
    [[device.zones]]
    name = "B"
    capacity = 50                # required with a counter
    counter = { unit = 3, entries = 0, exits = 1 }        # FC03, two u16 counters that wrap at 65536
    initial_occupied = 0         # occupancy when the agent starts (reset_count sets it later)

    [[device.signs]]             # 0..32 signs
    type = "led485"              # LED-485-0xx 7-segment display (Modbus): one zone
    unit = 10
    zone = "A"
    digits = 4                   # 1..6: larger free counts show as 9999
    name = "entrance-a"          # default sign<i> (1-based); its point is "<name>.shown"

    [[device.signs]]
    type = "alpha"               # Alpha protocol text sign: any zones, "A 3  B FULL"
    address = "01"               # two hex digits, "00" = every sign on the line
    label = "A"                  # TEXT file label
    zones = ["A", "B"]           # default: every zone

Detector and counter register maps are the installer's: no public RS-485 bay detector or lot
counter map was found (notes.md), so the config says where the values are. Every bad value is a
ConfigError naming the file and the dotted key (core.config_reader.Table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import NAME_RE, Table
from drivers.kind import ParseContext
from drivers.settings_rules import NAME_EXPECTED, common

__all__ = ["COMMANDS", "ParkingSettings", "Zone", "Detectors", "Counter", "Sign", "parse", "point_names"]

COMMANDS = ("set_sign_text", "clear_sign_text", "set_capacity", "reset_count")
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
ZONE_RE = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_HEX2 = re.compile(r"^[0-9A-Fa-f]{2}$")


@dataclass(frozen=True, slots=True)
class Detectors:
    unit: int
    register: int
    count: int


@dataclass(frozen=True, slots=True)
class Counter:
    unit: int
    entries: int
    exits: int


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    capacity: int
    detectors: tuple[Detectors, ...] = ()
    counter: Counter | None = None
    initial_occupied: int = 0

    @property
    def bays(self) -> int:
        return sum(d.count for d in self.detectors)


@dataclass(frozen=True, slots=True)
class Sign:
    name: str
    type: str                      # "led485" | "alpha"
    zones: tuple[str, ...]
    unit: int = 0                  # led485
    digits: int = 4                # led485
    address: str = "00"            # alpha
    label: str = "A"               # alpha


@dataclass(frozen=True, slots=True)
class ParkingSettings:
    kind: ClassVar[str] = "parking"
    name: str
    port: str
    zones: tuple[Zone, ...]
    signs: tuple[Sign, ...] = ()
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    timeout_s: float = 0.3
    refresh_s: float = 60.0
    poll_s: float = 2.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

    def zone(self, name: str) -> Zone | None:
        return next((z for z in self.zones if z.name == name), None)


def point_names(s: ParkingSettings) -> tuple[str, ...]:
    out: list[str] = []
    for z in s.zones:
        out += [f"{z.name}.occupied", f"{z.name}.free", f"{z.name}.capacity"]
        out += [f"{z.name}.bay{i}" for i in range(1, z.bays + 1)]
        if z.counter is not None:
            out += [f"{z.name}.entries", f"{z.name}.exits"]
    return tuple(out + [f"{sign.name}.shown" for sign in s.signs])


def _unit(t: Table) -> int:
    return t.int("unit", min=1, max=247)


def _detectors(zt: Table) -> tuple[Detectors, ...]:
    raw = zt.raw("detectors", None)
    if raw is None:
        return ()
    out = []
    for dt in zt.tables("detectors"):
        block = Detectors(_unit(dt), dt.int("register", min=0, max=0xFFFF), dt.int("count", min=1, max=125))
        if block.register + block.count > 0x10000:
            raise dt.error("count", "runs past register 65535", block.count, f"at most {0x10000 - block.register}")
        dt.reject_unknown()
        out.append(block)
    if not out:
        raise zt.error("detectors", "is empty", [], "at least one { unit, register, count }")
    return tuple(out)


def _counter(zt: Table) -> Counter | None:
    ct = zt.table("counter")
    if ct is None:
        return None
    c = Counter(_unit(ct), ct.int("entries", min=0, max=0xFFFF), ct.int("exits", min=0, max=0xFFFF))
    if c.entries == c.exits:
        raise ct.error("exits", "is the same register as entries", c.exits, "another register")
    if abs(c.entries - c.exits) >= 125:
        raise ct.error("exits", "too far from entries to read both at once", c.exits, "within 124 registers of entries")
    ct.reject_unknown()
    return c


def _zone(zt: Table) -> Zone:
    name = zt.str("name", pattern=ZONE_RE, expected="1-16 letters, digits, '_' or '-'")
    detectors, counter = _detectors(zt), _counter(zt)
    if bool(detectors) == (counter is not None):
        raise zt.error("detectors", "a zone needs detectors or a counter (one of them)",
                       None, "detectors = [{ unit, register, count }] or counter = { unit, entries, exits }")
    bays = sum(d.count for d in detectors)
    capacity = zt.int("capacity", bays, min=0, max=32767) if detectors else zt.int("capacity", min=0, max=32767)
    initial = zt.int("initial_occupied", 0, min=0, max=32767)
    if detectors and "initial_occupied" in zt.data:
        raise zt.error("initial_occupied", "only a counter zone starts from a set count", initial,
                       "no initial_occupied with detectors")
    zt.reject_unknown()
    return Zone(name, capacity, detectors, counter, initial)


def _sign(st: Table, index: int, zones: tuple[str, ...]) -> Sign:
    kind = st.str("type", choices=("led485", "alpha"))
    name = st.str("name", f"sign{index + 1}", pattern=NAME_RE, expected=NAME_EXPECTED)
    if kind == "led485":
        zone = st.str("zone", expected="the zone this display counts")
        if zone not in zones:
            raise st.error("zone", "no such zone", zone, "one of " + ", ".join(zones))
        sign = Sign(name, kind, (zone,), unit=_unit(st), digits=st.int("digits", 4, min=1, max=6))
    else:
        shown = st.str_list("zones", list(zones))
        for z in shown:
            if z not in zones:
                raise st.error("zones", "no such zone", z, "zones among " + ", ".join(zones))
        if not shown or len(set(shown)) != len(shown):
            raise st.error("zones", "must name distinct zones", list(shown), "e.g. [\"A\", \"B\"]")
        longest = sum(len(z) + 6 for z in shown) + 2 * (len(shown) - 1)  # "<zone> 32767" joined by 2 spaces
        if longest > 125:
            raise st.error("zones", "too many zones for one Alpha text (125 characters)", list(shown),
                           "fewer zones or shorter zone names")
        label = st.str("label", "A")
        if len(label) != 1 or not 0x20 < ord(label) < 0x7F or label == "0":
            raise st.error("label", "not an Alpha file label", label, "one printable character other than '0'")
        sign = Sign(name, kind, tuple(shown), address=st.str("address", "00", pattern=_HEX2,
                                                             expected="two hex digits, 00 = broadcast").upper(),
                    label=label)
    st.reject_unknown()
    return sign


def _check_units(t: Table, zones: tuple[Zone, ...], signs: tuple[Sign, ...]) -> None:
    """A display's unit is nobody else's; detector blocks on one unit do not overlap."""
    taken: dict[int, list[tuple[int, int, str]]] = {}
    for i, z in enumerate(zones):
        spans = [(d.unit, d.register, d.register + d.count) for d in z.detectors]
        if z.counter is not None:
            lo = min(z.counter.entries, z.counter.exits)
            spans.append((z.counter.unit, lo, max(z.counter.entries, z.counter.exits) + 1))
        for unit, lo, hi in spans:
            for olo, ohi, who in taken.get(unit, []):
                if lo < ohi and olo < hi:
                    raise t.error(f"zones[{i}]", f"registers {lo}..{hi - 1} of unit {unit} overlap {who}", z.name,
                                  "each bay and counter at its own registers")
            taken.setdefault(unit, []).append((lo, hi, f"zone {z.name!r}"))
    for i, sign in enumerate(signs):
        if sign.type == "led485" and sign.unit in taken:
            raise t.error(f"signs[{i}].unit", "unit already used by " + taken[sign.unit][0][2], sign.unit,
                          "a unit of its own (the display shows what is written to its register 0)")
        if sign.type == "led485":
            taken[sign.unit] = [(0, 0x10000, f"sign {sign.name!r}")]


def parse(t: Table, ctx: ParseContext) -> ParkingSettings:
    """One [[device]] table of kind "parking" -> ParkingSettings; ConfigError naming the key."""
    c = common(t, "parking", COMMANDS, 2.0)
    zone_tables = t.tables("zones")
    if not 1 <= len(zone_tables) <= 32:
        raise t.error("zones", "needs 1 to 32 zones", len(zone_tables), "[[device.zones]] sections")
    zones = tuple(_zone(zt) for zt in zone_tables)
    names = tuple(z.name for z in zones)
    if len(set(names)) != len(names):
        raise t.error("zones", "two zones share a name", list(names), "distinct zone names")
    sign_tables = t.tables("signs")
    if len(sign_tables) > 32:
        raise t.error("signs", "too many signs", len(sign_tables), "at most 32")
    signs = tuple(_sign(st, i, names) for i, st in enumerate(sign_tables))
    if len({s.name for s in signs}) != len(signs):
        raise t.error("signs", "two signs share a name", [s.name for s in signs], "distinct sign names")
    _check_units(t, zones, signs)
    baudrate = t.int("baudrate", 9600, min=1200, max=115200)
    if baudrate not in BAUD_RATES:
        raise t.error("baudrate", "not a standard rate", baudrate, "one of " + ", ".join(map(str, BAUD_RATES)))
    s = ParkingSettings(
        port=t.str("port", expected="a serial device path, e.g. /dev/ttyUSB1"), zones=zones, signs=signs,
        baudrate=baudrate, parity=t.str("parity", "N", choices=("N", "E", "O")),
        stopbits=t.int("stopbits", 1, min=1, max=2), timeout_s=t.int("timeout_ms", 300, min=20, max=5000) / 1000,
        refresh_s=t.float("refresh_s", 60.0, min=1, max=3600), **c)
    known = set(point_names(s))
    for p in s.points:
        if p not in known:
            raise t.error("points", f"unknown point {p!r}", p, "one of " + ", ".join(sorted(known)[:12]) + " ...")
    if s.refresh_s < s.poll_s:
        raise t.error("refresh_s", "shorter than poll_s (signs are rewritten from the poll)", s.refresh_s,
                      f"at least poll_s = {s.poll_s}")
    return s
