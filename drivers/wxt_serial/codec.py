"""Vaisala WXT530 ASCII protocol: the composite data message and its poll/setting commands.

Pure functions only (no I/O); the serial driver is drivers/wxt_serial.py.

A composite message (answer to ``0R0``) is the device address, the command echo and fields:

    0R0,Dn=000#,Dm=106#,Dx=182#,Sn=1.1#,...,Ta=16.0C,Ua=50.0P,Pa=1018.1H,...,Id=Ant

Each value ends in a unit letter (``C`` degC, ``P`` %RH, ``H`` hPa, ...); ``#`` in place of the
unit marks the value invalid, which we report as value None with Quality.MISSING. Field noise seen
on real lines (``Dn=0m=032D``: bytes lost mid-line) must cost only the damaged field: it comes back
with Quality.COMM_FAILURE and a note, and the other fields are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from core.errors import FrameError
from core.reading import Quality

__all__ = [
    "Measurement", "Composite", "UNITS", "DESCRIPTIONS", "parse_composite", "format_composite",
    "poll_command", "is_reply_to",
]

# Unit letters per field, from the WXT530 user guide ("data message" tables).
_WIND_SPEED = {"M": "m/s", "K": "km/h", "S": "mph", "N": "knot"}
_TEMP = {"C": "degC", "F": "degF"}
_HEATING = {"N": "V", "V": "V", "W": "V", "F": "V"}  # N off, V/W/F heating on at full/half/quarter
UNITS: dict[str, dict[str, str]] = {
    "Dn": {"D": "deg"}, "Dm": {"D": "deg"}, "Dx": {"D": "deg"},
    "Sn": _WIND_SPEED, "Sm": _WIND_SPEED, "Sx": _WIND_SPEED,
    "Ta": _TEMP, "Tp": _TEMP, "Th": _TEMP,
    "Ua": {"P": "%RH"},
    "Pa": {"H": "hPa", "P": "Pa", "B": "bar", "M": "mmHg", "I": "inHg"},
    "Rc": {"M": "mm", "I": "in"}, "Rd": {"s": "s"},
    "Ri": {"M": "mm/h", "I": "in/h"}, "Rp": {"M": "mm/h", "I": "in/h"},
    "Hc": {"M": "hits/cm2", "I": "hits/in2", "H": "hits"}, "Hd": {"s": "s"},
    "Hi": {"M": "hits/cm2h", "I": "hits/in2h", "H": "hits/h"},
    "Hp": {"M": "hits/cm2h", "I": "hits/in2h", "H": "hits/h"},
    "Vh": _HEATING, "Vs": {"V": "V"}, "Vr": {"V": "V"},
}
DESCRIPTIONS: dict[str, str] = {
    "Dn": "wind direction minimum", "Dm": "wind direction average", "Dx": "wind direction maximum",
    "Sn": "wind speed minimum", "Sm": "wind speed average", "Sx": "wind speed maximum",
    "Ta": "air temperature", "Tp": "internal temperature", "Ua": "relative humidity",
    "Pa": "air pressure", "Rc": "rain accumulation", "Rd": "rain duration", "Ri": "rain intensity",
    "Rp": "rain peak intensity", "Hc": "hail accumulation", "Hd": "hail duration",
    "Hi": "hail intensity", "Hp": "hail peak intensity", "Th": "heating temperature",
    "Vh": "heating voltage", "Vs": "supply voltage", "Vr": "3.5 V reference voltage",
}
TEXT_FIELDS = frozenset({"Id"})  # the information field carries text, not a number
# Decimals the WXT prints each field with (used by format_composite, i.e. the simulator).
DECIMALS: dict[str, int] = {
    "Dn": 0, "Dm": 0, "Dx": 0, "Sn": 1, "Sm": 1, "Sx": 1, "Ta": 1, "Tp": 1, "Ua": 1, "Pa": 1,
    "Rc": 2, "Rd": 0, "Ri": 1, "Hc": 1, "Hd": 0, "Hi": 1, "Rp": 1, "Hp": 1, "Th": 1, "Vh": 1,
    "Vs": 1, "Vr": 3,
}

_HEADER = re.compile(r"^([0-9A-Za-z?])R([0-9]),")
_FIELD = re.compile(r"^([A-Z][a-z0-9])=([-+]?[0-9]{1,9}(?:\.[0-9]{1,6})?)([A-Za-z#])$")
_TEXT_FIELD = re.compile(r"^([A-Z][a-z0-9])=([ -~]{0,32})$")


@dataclass(frozen=True, slots=True)
class Measurement:
    """One decoded field: value None unless quality is GOOD."""

    code: str
    value: float | None
    unit: str
    quality: Quality = Quality.GOOD
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Composite:
    """A parsed ``aRn,...`` message: numeric fields by code, text fields, and what was damaged."""

    address: str
    message: int
    fields: Mapping[str, Measurement]
    text: Mapping[str, str] = field(default_factory=dict)
    damaged: tuple[str, ...] = ()


def _parse_field(raw: str) -> Measurement | tuple[str, str] | str:
    """A Measurement, a (code, text) pair for text fields, or an error string naming the damage."""
    m = _FIELD.match(raw)
    if m is not None:
        code, number, letter = m.groups()
        if letter == "#":
            return Measurement(code, None, "", Quality.MISSING, "device marked the value invalid (#)")
        units = UNITS.get(code)
        if units is None:  # an auxiliary field we have no table for: keep the letter as its unit
            return Measurement(code, float(number), letter)
        unit = units.get(letter)
        if unit is None:
            return f"field {raw!r}: unit letter {letter!r} is not valid for {code} (expected one of {''.join(units)})"
        return Measurement(code, float(number), unit)
    t = _TEXT_FIELD.match(raw)
    if t is not None and t.group(1) in TEXT_FIELDS:
        return (t.group(1), t.group(2))
    return f"corrupted field {raw!r}"


def parse_composite(line: str | bytes) -> Composite:
    """Parse one data message. Raises FrameError only when the line is not a data message at all."""
    if isinstance(line, bytes):
        line = line.decode("ascii", errors="replace")
    text = line.strip("\r\n\x00 ")
    head = _HEADER.match(text)
    if head is None:
        raise FrameError(f"not a WXT data message (expected 'aRn,' header): {text[:40]!r}")
    fields: dict[str, Measurement] = {}
    texts: dict[str, str] = {}
    damaged: list[str] = []
    for raw in text[head.end():].split(","):
        if not raw:
            continue
        parsed = _parse_field(raw)
        if isinstance(parsed, str):
            damaged.append(parsed)
            code = raw[:2]
            # Mark the field bad when its code is still recognisable; never invent a value.
            if code in UNITS and code not in fields and raw[2:3] == "=":
                fields[code] = Measurement(code, None, "", Quality.COMM_FAILURE, parsed)
        elif isinstance(parsed, tuple):
            texts[parsed[0]] = parsed[1]
        elif parsed.code in fields:
            damaged.append(f"field {parsed.code} repeated in one message; kept the first")
        else:
            fields[parsed.code] = parsed
    return Composite(head.group(1), int(head.group(2)), fields, texts, tuple(damaged))


def _unit_letter(code: str, unit: str) -> str:
    for letter, name in UNITS.get(code, {}).items():
        if name == unit or letter == unit:
            return letter
    raise ValueError(f"no unit letter for {code} in {unit!r}")


def format_composite(
    address: str,
    values: Iterable[tuple[str, float | None, str]],
    *,
    message: int = 0,
    text: Mapping[str, str] | None = None,
) -> str:
    """Build ``aR0,...`` (no line end) from (code, value or None, unit name or letter) triples."""
    parts = [f"{address}R{message}"]
    for code, value, unit in values:
        decimals = DECIMALS.get(code, 1)
        letter = _unit_letter(code, unit) if code in UNITS else unit
        shown = 0.0 if value is None else value
        if code in ("Dn", "Dm", "Dx"):
            number = f"{round(shown) % 360:03d}"
        else:
            number = f"{shown:.{decimals}f}"
        parts.append(f"{code}={number}{'#' if value is None else letter}")
    for code, shown_text in (text or {}).items():
        parts.append(f"{code}={shown_text}")
    return ",".join(parts)


def poll_command(address: str = "0", message: int = 0) -> bytes:
    """The poll for data message n (``0R0`` composite), with the CR LF the device expects."""
    return f"{address}R{message}\r\n".encode("ascii")


def is_reply_to(line: str, address: str, message: int = 0) -> bool:
    return line.startswith(f"{address}R{message},")
