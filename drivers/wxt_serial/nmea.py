"""NMEA 0183 sentences from weather instruments (talker WI): checksum, MWV, MDA, XDR.

Pure functions only. A sentence is ``$<talker><type>,<fields>*<hh>`` where hh is the XOR of every
character between ``$`` and ``*``. The checksum is ALWAYS verified: the WXT530 manual itself
prints an example with a wrong one, so a line that fails the check is rejected with FrameError,
never half-trusted. Measurements come back in the WXT field codes of drivers/wxt_ascii (Dm, Sm, Ta,
...), so ASCII and NMEA modes feed the same points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import reduce

from core.errors import FrameError
from core.reading import Quality
from drivers.wxt_serial.codec import Measurement

__all__ = [
    "Sentence", "checksum", "parse_sentence", "build_sentence", "decode", "DECODERS",
    "XDR_CODES",
]


@dataclass(frozen=True, slots=True)
class Sentence:
    talker: str          # "WI"
    kind: str            # "MWV", "MDA", "XDR"
    fields: tuple[str, ...]


def checksum(body: str) -> int:
    """XOR of the characters between '$' and '*'."""
    return reduce(lambda acc, ch: acc ^ ord(ch), body, 0)


def build_sentence(talker: str, kind: str, fields: Iterable[str]) -> str:
    """``$WIMWV,...*hh`` without the line end."""
    body = ",".join([talker + kind, *fields])
    return f"${body}*{checksum(body):02X}"


def parse_sentence(line: str | bytes) -> Sentence:
    """Split and verify one sentence. FrameError names what is wrong (framing, characters, checksum)."""
    if isinstance(line, bytes):
        line = line.decode("ascii", errors="replace")
    text = line.strip("\r\n\x00 ")
    if not text.startswith("$"):
        raise FrameError(f"NMEA sentence must start with '$': {text[:40]!r}")
    star = text.rfind("*")
    if star < 0:
        raise FrameError(f"NMEA sentence has no '*hh' checksum: {text[:40]!r}")
    body, given = text[1:star], text[star + 1:]
    if len(given) != 2 or any(c not in "0123456789abcdefABCDEF" for c in given):
        raise FrameError(f"NMEA checksum must be two hex digits, got {given[:8]!r}")
    bad = next((c for c in body if not " " <= c <= "~" or c in "$*!"), None)
    if bad is not None:
        raise FrameError(f"NMEA sentence holds a forbidden character {bad!r}")
    want = checksum(body)
    if int(given, 16) != want:
        raise FrameError(f"NMEA checksum mismatch: sentence says {given.upper()}, content gives {want:02X}")
    parts = body.split(",")
    address = parts[0]
    if len(address) != 5 or not address.isalnum() or not address.isupper():
        raise FrameError(f"NMEA address field must be talker(2)+type(3), got {address!r}")
    return Sentence(address[:2], address[2:], tuple(parts[1:]))


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FrameError(f"{what}: {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise FrameError(f"{what}: {text!r} is not a finite number")
    return value


_SPEED_UNITS = {"K": "km/h", "M": "m/s", "N": "knot", "S": "mph"}


def _mwv(f: tuple[str, ...]) -> list[Measurement]:
    if len(f) != 5:
        raise FrameError(f"MWV has 5 fields (angle,ref,speed,unit,status), got {len(f)}")
    angle, ref, speed, unit, status = f
    if ref not in ("R", "T"):
        raise FrameError(f"MWV reference must be R or T, got {ref!r}")
    if unit not in _SPEED_UNITS:
        raise FrameError(f"MWV speed unit must be one of K/M/N/S, got {unit!r}")
    if status not in ("A", "V"):
        raise FrameError(f"MWV status must be A (valid) or V (invalid), got {status!r}")
    if status == "V" or not angle or not speed:
        why = "MWV status V (data invalid)" if status == "V" else "MWV field empty"
        return [Measurement("Dm", None, "", Quality.MISSING, why), Measurement("Sm", None, "", Quality.MISSING, why)]
    return [
        Measurement("Dm", _number(angle, "MWV wind angle"), "deg"),
        Measurement("Sm", _number(speed, "MWV wind speed"), _SPEED_UNITS[unit]),
    ]


# MDA field pairs (value index, unit letter expected) -> (code, unit name). Empty fields are
# quantities the instrument does not measure (water temperature, absolute humidity): omitted.
_MDA = [
    (0, "I", "Pa_inHg", "inHg"), (2, "B", "Pa", "bar"), (4, "C", "Ta", "degC"),
    (10, "C", "Td", "degC"), (12, "T", "Dm", "deg"), (14, "M", "Dm_magnetic", "deg"),
    (16, "N", "Sm_knot", "knot"), (18, "M", "Sm", "m/s"),
]


def _mda(f: tuple[str, ...]) -> list[Measurement]:
    if len(f) != 20:
        raise FrameError(f"MDA has 20 fields, got {len(f)}")
    out = []
    for i, letter, code, unit in _MDA:
        if not f[i]:
            continue
        if f[i + 1] != letter:
            raise FrameError(f"MDA field {i + 2} unit must be {letter!r}, got {f[i + 1]!r}")
        out.append(Measurement(code, _number(f[i], f"MDA field {i + 1}"), unit))
    if f[8]:
        out.append(Measurement("Ua", _number(f[8], "MDA relative humidity"), "%RH"))
    return out


# XDR (transducer type, id) -> WXT code, and per-type unit letters.
XDR_CODES: dict[tuple[str, str], str] = {
    ("A", "0"): "Dn", ("A", "1"): "Dm", ("A", "2"): "Dx",
    ("S", "0"): "Sn", ("S", "1"): "Sm", ("S", "2"): "Sx",
    ("C", "0"): "Ta", ("C", "1"): "Tp", ("C", "2"): "Th",
    ("H", "0"): "Ua", ("P", "0"): "Pa",
    ("V", "0"): "Rc", ("V", "1"): "Hc", ("Z", "0"): "Rd", ("Z", "1"): "Hd",
    ("R", "0"): "Ri", ("R", "1"): "Hi", ("R", "2"): "Rp", ("R", "3"): "Hp",
    ("U", "0"): "Vh", ("U", "1"): "Vs", ("U", "2"): "Vr",
}
_XDR_UNITS: dict[str, dict[str, str]] = {
    "A": {"D": "deg"}, "S": _SPEED_UNITS, "C": {"C": "degC", "F": "degF"}, "H": {"P": "%RH"},
    "P": {"B": "bar", "P": "Pa", "H": "hPa", "I": "inHg", "M": "mmHg"},
    "V": {"M": "mm", "I": "in", "H": "hits"}, "Z": {"s": "s"},
    "R": {"M": "mm/h", "I": "in/h", "H": "hits/h"}, "U": {"V": "V", "N": "V", "W": "V", "F": "V"},
}


def _xdr(f: tuple[str, ...]) -> list[Measurement]:
    if not f or len(f) % 4:
        raise FrameError(f"XDR carries quadruplets (type,value,unit,id); got {len(f)} fields")
    out = []
    for q in range(0, len(f), 4):
        kind, value, unit, ident = f[q:q + 4]
        code = XDR_CODES.get((kind, ident), f"XDR_{kind}{ident}")
        if unit == "#" or not value:
            out.append(Measurement(code, None, "", Quality.MISSING, "XDR value marked invalid"))
            continue
        units = _XDR_UNITS.get(kind)
        name = units.get(unit) if units else unit
        if name is None:
            raise FrameError(f"XDR unit {unit!r} is not valid for transducer type {kind!r}")
        out.append(Measurement(code, _number(value, f"XDR {kind} {ident}"), name))
    return out


DECODERS: dict[str, Callable[[tuple[str, ...]], list[Measurement]]] = {
    "MWV": _mwv, "MDA": _mda, "XDR": _xdr,
}


def decode(line: str | bytes) -> list[Measurement]:
    """Verify and decode one sentence into measurements. FrameError for anything unusable."""
    sentence = parse_sentence(line)
    decoder = DECODERS.get(sentence.kind)
    if decoder is None:
        raise FrameError(f"unsupported NMEA sentence type {sentence.kind!r}")
    return decoder(sentence.fields)
