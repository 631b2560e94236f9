"""Modbus register codec: pure functions from registers to numbers and back, and read planning.

No I/O here, so every rule is testable without a socket.

Byte orders. A 32-bit value has big-endian bytes A B C D (A most significant). Devices put them on
the wire as registers (each register is two bytes, high byte first):

    ABCD  [AB, CD]   big-endian, the Modbus default
    CDAB  [CD, AB]   word swap ("little-endian words"; DFRobot rain gauge)
    BADC  [BA, DC]   byte swap inside each word
    DCBA  [DC, BA]   both: fully little-endian

For 16-bit types only the byte swap matters: BADC/DCBA read a register as [BA].

Invalid markers are compared with the raw integer after byte ordering and before scaling (e.g. a
WXT530 S16 register holding 32767), and before a bit field (`bits`) is taken out of it. For f32
they are compared with the 32-bit pattern; NaN and infinities are always reported missing, because
a reading never carries a non-finite number.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.reading import Quality
from drivers.modbus.registers import MAX_READ_REGISTERS, RAW_RANGE, REGISTER_COUNT, WORD_ORDERS

if TYPE_CHECKING:  # the profile loader imports nothing of the codec (drivers.modbus.registers holds what both need)
    from drivers.modbus.profile import PointSpec

__all__ = [
    "MAX_READ_REGISTERS",
    "RAW_RANGE",
    "REGISTER_COUNT",
    "WORD_ORDERS",
    "ReadBlock",
    "counter_delta",
    "decode_point",
    "encode_point",
    "plan_reads",
    "raw_count",
]



@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering one or more points of the same function code."""

    function: int
    address: int
    count: int
    points: tuple[PointSpec, ...]


def _wire_to_abcd(wire: bytes, word_order: str) -> bytes:
    """Reorder the bytes as they came off the wire into most-significant-first order."""
    if len(wire) == 2:
        return wire[::-1] if word_order in ("BADC", "DCBA") else wire
    a, b, c, d = wire
    if word_order == "ABCD":
        return bytes((a, b, c, d))
    if word_order == "CDAB":
        return bytes((c, d, a, b))
    if word_order == "BADC":
        return bytes((b, a, d, c))
    return bytes((d, c, b, a))  # DCBA


def _abcd_to_wire(data: bytes, word_order: str) -> bytes:
    # Every one of these permutations is its own inverse.
    return _wire_to_abcd(data, word_order)


_PACK_REGS = {1: struct.Struct(">H").pack, 2: struct.Struct(">HH").pack}  # by REGISTER_COUNT


def _scaled(raw: float, scale: float, offset: float) -> float:
    # Dividing by an integer divisor keeps decimal values clean (3/10 == 0.3, 3*0.1 != 0.3).
    if scale == 1:  # the common case; the same float the divisor branch gives (raw / 1)
        return raw / 1 + offset
    divisor = 1.0 / scale
    if abs(divisor) >= 1 and abs(divisor - round(divisor)) < 1e-9:
        return raw / round(divisor) + offset
    return raw * scale + offset


def _unscaled(value: float, scale: float, offset: float) -> float:
    divisor = 1.0 / scale
    if abs(divisor) >= 1 and abs(divisor - round(divisor)) < 1e-9:
        return (value - offset) * round(divisor)
    return (value - offset) / scale


def decode_point(spec: PointSpec, regs: Sequence[int]) -> tuple[float | None, Quality]:
    """Decode one point from exactly its registers.

    Returns (value, Quality.GOOD), (value, Quality.OUT_OF_RANGE) when outside spec.min/max, or
    (None, Quality.MISSING) for an invalid marker or a non-finite float. Raises ValueError only
    for a wrong register count or a register outside 0..65535 (a caller bug, not device data).
    """
    count = REGISTER_COUNT[spec.type]
    if len(regs) != count:
        raise ValueError(f"point {spec.name!r} ({spec.type}) needs {count} register(s), got {len(regs)}")
    for r in regs:
        if not isinstance(r, int) or not 0 <= r <= 0xFFFF:
            raise ValueError(f"point {spec.name!r}: register value must be an int 0..65535, got {r!r}")
    data = _wire_to_abcd(_PACK_REGS[count](*regs), spec.word_order)
    if spec.type == "f32":
        if int.from_bytes(data, "big") in spec.invalid:
            return None, Quality.MISSING
        raw: float = struct.unpack(">f", data)[0]
        if not math.isfinite(raw):
            return None, Quality.MISSING
    else:
        raw = int.from_bytes(data, "big", signed=spec.type.startswith("s"))
        if raw in spec.invalid:
            return None, Quality.MISSING
        if spec.bits is not None:
            first, last = spec.bits
            raw = (raw >> first) & ((1 << (last - first + 1)) - 1)
    value = _scaled(raw, spec.scale, spec.offset)
    if not math.isfinite(value):  # an f32 near its limit times a large scale
        return None, Quality.MISSING
    if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
        return value, Quality.OUT_OF_RANGE
    return value, Quality.GOOD


def encode_point(spec: PointSpec, value: float | None) -> list[int]:
    """Encode a value into the point's registers, the exact inverse of decode_point.

    None encodes the point's first invalid marker (how a device says "no value"). Raises
    ValueError naming the point when the value does not fit the type (or its bit field) or would
    encode to an invalid marker (it would read back as missing). A bit field's registers hold its
    own bits only, the others 0: OR the fields that share a register.
    """
    if value is None:
        if not spec.invalid:
            raise ValueError(f"point {spec.name!r} has no invalid marker to encode a missing value")
        lo, _ = RAW_RANGE[spec.type]
        marker = spec.invalid[0]
        if spec.type == "f32":
            data = marker.to_bytes(4, "big")
        else:
            data = marker.to_bytes(REGISTER_COUNT[spec.type] * 2, "big", signed=lo < 0)
    else:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"point {spec.name!r}: value must be a finite number, got {value!r}")
        raw_f = _unscaled(float(value), spec.scale, spec.offset)
        if spec.type == "f32":
            try:
                data = struct.pack(">f", raw_f)
            except OverflowError:
                raise ValueError(f"point {spec.name!r}: {value!r} does not fit a 32-bit float") from None
            if int.from_bytes(data, "big") in spec.invalid:
                raise ValueError(f"point {spec.name!r}: {value!r} encodes to an invalid marker")
        else:
            raw = round(raw_f)
            lo, hi = RAW_RANGE[spec.type]
            if spec.bits is not None:  # only the field's bits; the caller ORs the fields of one register
                first, last = spec.bits
                lo, hi = 0, (1 << (last - first + 1)) - 1
                if not lo <= raw <= hi:
                    raise ValueError(f"point {spec.name!r}: {value!r} does not fit bits {first}..{last}")
                raw <<= first
                lo, hi = RAW_RANGE[spec.type]
            if not lo <= raw <= hi:
                raise ValueError(
                    f"point {spec.name!r}: {value!r} is raw {raw}, outside {spec.type} range {lo}..{hi}"
                )
            if raw in spec.invalid:
                raise ValueError(f"point {spec.name!r}: {value!r} encodes to the invalid marker {raw}")
            data = raw.to_bytes(REGISTER_COUNT[spec.type] * 2, "big", signed=lo < 0)
    wire = _abcd_to_wire(data, spec.word_order)
    return [int.from_bytes(wire[i:i + 2], "big") for i in range(0, len(wire), 2)]


def raw_count(spec: PointSpec, value: float) -> int:
    """The raw integer behind a decoded value of an integer point (inverse of the scaling)."""
    if spec.type == "f32":
        raise ValueError(f"point {spec.name!r}: an f32 point has no raw count")
    return round(_unscaled(value, spec.scale, spec.offset))


def counter_delta(previous: int, current: int, wrap: int) -> tuple[int, bool]:
    """How far a wrapping counter advanced from `previous` to `current` (raw counts).

    The counter runs 0 .. wrap-1 (or the signed equivalent) and continues at the bottom after the
    top, so the advance is (current - previous) mod wrap; `wrapped` is True when the raw value went
    down, i.e. the counter passed its top in between. An advance of a whole wrap or more between two
    reads cannot be seen: poll counters faster than they can wrap.
    """
    if not isinstance(wrap, int) or wrap < 2:
        raise ValueError(f"wrap must be an integer >= 2, got {wrap!r}")
    for name, v in (("previous", previous), ("current", current)):
        if not isinstance(v, int) or not -wrap <= v < wrap:
            raise ValueError(f"{name} must be an integer count within +-wrap ({wrap}), got {v!r}")
    return (current - previous) % wrap, current < previous


def plan_reads(
    points: Sequence[PointSpec], max_registers: int = MAX_READ_REGISTERS, max_gap: int = 8
) -> list[ReadBlock]:
    """Coalesce points into as few read requests as the rules allow.

    Points of the same function code share a request when the registers between them number at
    most `max_gap` (those gap registers are read and ignored) and the request stays within
    `max_registers`. Blocks come out ordered by function, then address; every point is in
    exactly one block. Raises ValueError for bad limits or a point named twice.
    """
    if not isinstance(max_registers, int) or not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ValueError(f"max_registers must be 1..{MAX_READ_REGISTERS}, got {max_registers!r}")
    if not isinstance(max_gap, int) or max_gap < 0:
        raise ValueError(f"max_gap must be a non-negative int, got {max_gap!r}")
    seen: set[str] = set()
    for p in points:
        if p.name in seen:
            raise ValueError(f"point {p.name!r} is listed twice")
        seen.add(p.name)
        if REGISTER_COUNT[p.type] > max_registers:
            raise ValueError(f"point {p.name!r} needs {REGISTER_COUNT[p.type]} registers > max_registers")
    ordered = sorted(points, key=lambda p: (p.function, p.address, p.name))
    blocks: list[ReadBlock] = []
    current: list[PointSpec] = []
    start = end = 0  # end is exclusive
    for p in ordered:
        p_end = p.address + REGISTER_COUNT[p.type]
        if (
            current
            and p.function == current[0].function
            and p.address - end <= max_gap
            and max(end, p_end) - start <= max_registers
        ):
            current.append(p)
            end = max(end, p_end)
            continue
        if current:
            blocks.append(ReadBlock(current[0].function, start, end - start, tuple(current)))
        current, start, end = [p], p.address, p_end
    if current:
        blocks.append(ReadBlock(current[0].function, start, end - start, tuple(current)))
    return blocks
