"""Device profiles as data: a TOML file describes a device's line settings and register map.

    name = "vaisala_wxt530"            # required, matches the file's purpose
    manufacturer = "Vaisala"
    model = "WXT530"
    protocol = "modbus"                # the only protocol profiles describe so far
    default_unit = 1                   # Modbus unit id 1..255
    max_registers_per_read = 125       # 1..125
    max_read_gap = 8                   # unmapped registers a read may span (0 = never)

    [line]                             # serial defaults (19200 8E1 if absent); a box config may override
    baudrate = 19200
    parity = "N"                       # N, E or O
    stopbits = 1
    bytesize = 8

    [points.air_temperature]
    function = 4                       # 3 holding or 4 input registers
    address = "0x001F"                 # 0-based wire address: an int or a "0x..." string
    type = "s16"                       # u16 s16 u32 s32 f32
    word_order = "ABCD"                # ABCD CDAB BADC DCBA (see drivers.modbus.codec)
    scale = 0.1                        # value = raw * scale + offset
    offset = 0.0
    unit = "degC"
    invalid = [32767]                  # raw values that mean "no value"
    min = -50.0                        # optional physical range -> Quality.OUT_OF_RANGE
    max = 60.0

    [points.model_number]              # a bit field: bits 8..15 (the high byte) of register 0x0000
    function = 4
    address = "0x0000"
    type = "u16"
    bits = [8, 15]                     # first and last bit (0 = least significant) of the raw value;
    invalid = [65535]                  # integer types only; `invalid` is compared with the whole raw
                                       # value, scale/offset/min/max apply to the field. Several points
                                       # may share a register (e.g. [0, 7] for the low byte)

    [points.tips]                      # a counter: the scheduler derives "<name>_rate" from it
    function = 4
    address = "0x000A"
    type = "u32"
    word_order = "CDAB"
    counter = { wrap = 4294967296, rate_unit = "tips/h", rate_per_s = 3600, max_rate = 5000 }
    # wrap: raw modulus (default 2**bits of the type); rate = wrap-safe delta * scale / seconds *
    # rate_per_s; a rate above max_rate means the counter was reset, and no rate is reported

Everything is validated once in `load_profile`; each failure is a ConfigError naming the file, the
dotted key, the bad value and what was expected. Drivers receive only the typed objects below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.config_reader import Table, load_toml
from core.errors import ConfigError
from drivers.modbus.registers import MAX_READ_REGISTERS, RAW_RANGE, REGISTER_COUNT, WORD_ORDERS

__all__ = ["PROFILE_DIR", "CounterSpec", "LineDefaults", "PointSpec", "Profile", "SpecError", "load_profile"]

PROFILE_DIR = Path(__file__).with_name("profiles")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]{1,4}$")
BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class SpecError(ValueError):
    """A value object got a bad field; the loader turns it into a ConfigError with file and key."""

    def __init__(self, field_name: str, value: Any, expected: str) -> None:
        self.field = field_name
        self.value = value
        self.expected = expected
        super().__init__(f"{field_name}: got {value!r}; expected {expected}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """A point that counts up and wraps (tips, pulses, accumulated mm): the box derives a rate."""

    wrap: int                     # raw modulus: after wrap - 1 the raw value goes back to 0
    rate_unit: str = ""           # unit of the derived "<point>_rate" reading, e.g. "mm/h"
    rate_per_s: float = 1.0       # rate = delta / seconds * rate_per_s (3600 for "per hour")
    max_rate: float | None = None  # a larger rate is a reset (or a jump), not data

    def __post_init__(self) -> None:
        if not _is_int(self.wrap) or not 2 <= self.wrap <= 2**32:
            raise SpecError("wrap", self.wrap, "an integer 2..4294967296 (the raw modulus)")
        if not isinstance(self.rate_unit, str):
            raise SpecError("rate_unit", self.rate_unit, "a string such as 'mm/h'")
        if not _is_num(self.rate_per_s) or self.rate_per_s <= 0:
            raise SpecError("rate_per_s", self.rate_per_s, "a positive number (3600 for per hour)")
        if self.max_rate is not None and (not _is_num(self.max_rate) or self.max_rate <= 0):
            raise SpecError("max_rate", self.max_rate, "a positive number")


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One named value in a device's register map."""

    name: str
    function: int
    address: int
    type: str = "u16"
    word_order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    invalid: tuple[int, ...] = ()
    min: float | None = None
    max: float | None = None
    counter: CounterSpec | None = None
    bits: tuple[int, int] | None = None  # (first, last) bit of the raw value, for a bit field

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SpecError("name", self.name, "lower_snake_case starting with a letter")
        if self.function not in (3, 4) or not _is_int(self.function):
            raise SpecError("function", self.function, "3 (holding registers) or 4 (input registers)")
        if not isinstance(self.type, str) or self.type not in REGISTER_COUNT:
            raise SpecError("type", self.type, "one of " + ", ".join(REGISTER_COUNT))
        last = 0xFFFF - REGISTER_COUNT[self.type] + 1
        if not _is_int(self.address) or not 0 <= self.address <= last:
            raise SpecError("address", self.address, f"a register address 0..{last} (0x{last:04X})")
        if not isinstance(self.word_order, str) or self.word_order not in WORD_ORDERS:
            raise SpecError("word_order", self.word_order, "one of " + ", ".join(WORD_ORDERS))
        if not _is_num(self.scale) or self.scale == 0:
            raise SpecError("scale", self.scale, "a finite non-zero number")
        if not _is_num(self.offset):
            raise SpecError("offset", self.offset, "a finite number")
        if not isinstance(self.unit, str):
            raise SpecError("unit", self.unit, "a string such as 'degC' ('' for none)")
        lo, hi = RAW_RANGE[self.type]
        if not isinstance(self.invalid, tuple) or not all(_is_int(v) and lo <= v <= hi for v in self.invalid):
            raise SpecError("invalid", self.invalid, f"raw {self.type} values in {lo}..{hi}")
        for key in ("min", "max"):
            v = getattr(self, key)
            if v is not None and not _is_num(v):
                raise SpecError(key, v, "a finite number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise SpecError("max", self.max, f"a number >= min ({self.min})")
        if self.counter is not None:
            if not isinstance(self.counter, CounterSpec):
                raise SpecError("counter", self.counter, "a CounterSpec")
            if self.type == "f32" or self.scale <= 0:
                raise SpecError("counter", self.type if self.type == "f32" else self.scale,
                                "an integer type with a positive scale for a counter")
            if self.counter.wrap > 2 ** (16 * REGISTER_COUNT[self.type]):
                raise SpecError("counter", self.counter.wrap,
                                f"a wrap of at most {2 ** (16 * REGISTER_COUNT[self.type])} for {self.type}")

        if self.bits is not None:
            width = 16 * REGISTER_COUNT[self.type]
            if (not isinstance(self.bits, tuple) or len(self.bits) != 2 or not all(_is_int(b) for b in self.bits)
                    or not 0 <= self.bits[0] <= self.bits[1] < width or self.type not in ("u16", "u32")):
                raise SpecError("bits", self.bits, f"[first, last] bit numbers 0..{width - 1} with first <= last, "
                                "on a u16 or u32 point")
            if self.counter is not None:
                raise SpecError("bits", self.bits, "no bit field on a counter")

    @property
    def count(self) -> int:
        """Number of registers the point occupies."""
        return REGISTER_COUNT[self.type]


@dataclass(frozen=True, slots=True)
class LineDefaults:
    """Serial line settings the device ships with (defaults: the Modbus serial spec's 19200 8E1)."""

    baudrate: int = 19200
    parity: str = "E"
    stopbits: int = 1
    bytesize: int = 8

    def __post_init__(self) -> None:
        if self.baudrate not in BAUDRATES or not _is_int(self.baudrate):
            raise SpecError("baudrate", self.baudrate, "one of " + ", ".join(map(str, BAUDRATES)))
        if not isinstance(self.parity, str) or self.parity not in ("N", "E", "O"):
            raise SpecError("parity", self.parity, '"N", "E" or "O"')
        if self.stopbits not in (1, 2) or not _is_int(self.stopbits):
            raise SpecError("stopbits", self.stopbits, "1 or 2")
        if self.bytesize not in (7, 8) or not _is_int(self.bytesize):
            raise SpecError("bytesize", self.bytesize, "7 or 8")


@dataclass(frozen=True, slots=True)
class Profile:
    """A device model: identity, line defaults and its points, in file order."""

    name: str
    manufacturer: str
    model: str
    protocol: str = "modbus"
    line: LineDefaults = field(default_factory=LineDefaults)
    default_unit: int = 1
    max_registers_per_read: int = MAX_READ_REGISTERS
    points: tuple[PointSpec, ...] = ()
    max_read_gap: int = 8

    def point(self, name: str) -> PointSpec:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(f"profile {self.name!r} has no point {name!r}")


_TOP_KEYS = {"name", "manufacturer", "model", "protocol", "default_unit", "max_registers_per_read",
             "max_read_gap", "line", "points"}
_POINT_KEYS = {f.name for f in fields(PointSpec)} - {"name"}
_LINE_KEYS = {f.name for f in fields(LineDefaults)}
_COUNTER_KEYS = {f.name for f in fields(CounterSpec)}


class _Loader:
    """Validates one parsed profile (core.config_reader.Table for the document and its [line]; the
    point and counter value objects check their own fields, SpecError naming the field)."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str | None, message: str, value: Any = None, expected: str | None = None) -> ConfigError:
        return ConfigError(message, file=self.file, key=key, value=value, expected=expected)

    def unknown(self, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
        for k in table:
            if k not in allowed:
                raise self.fail(f"{prefix}{k}", "unknown key", k, "one of " + ", ".join(sorted(allowed)))

    def register(self, value: Any, key: str) -> Any:
        if isinstance(value, str):
            if not _HEX_RE.match(value):
                raise self.fail(key, "bad register number", value, 'an integer or a hex string like "0x001F"')
            return int(value, 16)
        return value  # ints and wrong types alike go on to PointSpec's own check

    def point(self, name: str, table: Any) -> PointSpec:
        prefix = f"points.{name}"
        if not isinstance(table, dict):
            raise self.fail(prefix, "a point must be a table", table, f"[{prefix}] with function, address, type")
        self.unknown(table, _POINT_KEYS, prefix + ".")
        for required in ("function", "address"):
            if required not in table:
                raise self.fail(f"{prefix}.{required}", "missing", None, "a value for every point")
        args = dict(table)
        args["address"] = self.register(table["address"], f"{prefix}.address")
        if "invalid" in args:
            inv = args["invalid"]
            if not isinstance(inv, list):
                raise self.fail(f"{prefix}.invalid", "bad value", inv, "a list of raw values, e.g. [32767]")
            args["invalid"] = tuple(self.register(v, f"{prefix}.invalid") for v in inv)
        if isinstance(args.get("scale"), int) and not isinstance(args.get("scale"), bool):
            args["scale"] = float(args["scale"])
        if "bits" in args:
            bits = args["bits"]
            args["bits"] = tuple(bits) if isinstance(bits, list) else bits
        if "counter" in args:
            args["counter"] = self.counter(args["counter"], args.get("type", "u16"), f"{prefix}.counter")
        try:
            return PointSpec(name=name, **args)
        except SpecError as exc:
            key = prefix if exc.field == "name" else f"{prefix}.{exc.field}"
            raise self.fail(key, "bad value", exc.value, exc.expected) from None

    def counter(self, table: Any, type_: Any, key: str) -> CounterSpec:
        if table is True:
            table = {}
        if not isinstance(table, dict):
            raise self.fail(key, "bad value", table,
                            'true or a table such as { rate_unit = "mm/h", rate_per_s = 3600 }')
        self.unknown(table, _COUNTER_KEYS, key + ".")
        args = dict(table)
        args.setdefault("wrap", 2 ** (16 * (REGISTER_COUNT.get(type_, 1) if isinstance(type_, str) else 1)))
        try:
            return CounterSpec(**args)
        except SpecError as exc:
            raise self.fail(f"{key}.{exc.field}", "bad value", exc.value, exc.expected) from None

    def profile(self, doc: Table) -> Profile:
        self.unknown(dict(doc.data), _TOP_KEYS, "")
        protocol = doc.str("protocol", "modbus", expected='"modbus"')
        if protocol != "modbus":
            raise doc.error("protocol", "unsupported protocol", protocol, '"modbus"')
        line_doc = doc.table("line") or doc.child({}, "line")
        self.unknown(dict(line_doc.data), _LINE_KEYS, "line.")
        try:
            line = LineDefaults(**line_doc.data)
        except SpecError as exc:
            raise self.fail(f"line.{exc.field}", "bad value", exc.value, exc.expected) from None
        points_doc = doc.raw("points")
        if not isinstance(points_doc, dict) or not points_doc:
            raise self.fail("points", "missing or empty", points_doc, "at least one [points.<name>] table")
        points = tuple(self.point(name, table) for name, table in points_doc.items())
        for p in points:
            if p.counter is not None and f"{p.name}_rate" in points_doc:
                raise self.fail(f"points.{p.name}_rate", "name taken by the derived rate of a counter",
                                f"{p.name}_rate", f"another name: the box derives {p.name}_rate from {p.name}")
        text = "a non-empty string"
        return Profile(
            name=doc.str("name", expected=text),
            manufacturer=doc.str("manufacturer", expected=text),
            model=doc.str("model", expected=text),
            protocol=protocol,
            line=line,
            default_unit=doc.int("default_unit", 1, min=1, max=255),
            max_registers_per_read=doc.int("max_registers_per_read", MAX_READ_REGISTERS, min=1, max=MAX_READ_REGISTERS),
            max_read_gap=doc.int("max_read_gap", 8, min=0, max=MAX_READ_REGISTERS),
            points=points,
        )


def profile_path(name_or_path: str) -> Path:
    """A bare name (no slash, no suffix) means a shipped profile; anything else is a path."""
    if _NAME_RE.match(name_or_path):
        return PROFILE_DIR / f"{name_or_path}.toml"
    return Path(name_or_path)


def load_profile(name_or_path: str) -> Profile:
    """Load and validate a profile; raises ConfigError naming file, key, value and expectation."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ConfigError("profile must be a name or a path", value=name_or_path,
                          expected="e.g. 'vaisala_wxt530' or 'profiles/x.toml'")
    path = profile_path(name_or_path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
        raise ConfigError("cannot read profile (no such file)", file=str(path),
                          expected=f"a readable TOML file; shipped profiles: {shipped}")
    doc = load_toml(path, "profile")
    return _Loader(str(path)).profile(doc)
