"""drivers.modbus.codec: register decoding/encoding for every type and byte order, and read planning."""

from __future__ import annotations

import math
import struct
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from core.reading import Quality
from drivers.modbus.codec import (
    MAX_READ_REGISTERS,
    RAW_RANGE,
    REGISTER_COUNT,
    WORD_ORDERS,
    decode_point,
    encode_point,
    plan_reads,
)
from drivers.modbus.profile import PointSpec, SpecError

TYPES = tuple(REGISTER_COUNT)
reg16 = st.integers(0, 0xFFFF)


def spec(type_: str = "u16", order: str = "ABCD", **kw: object) -> PointSpec:
    return PointSpec(name=kw.pop("name", "p"), function=kw.pop("function", 3), address=kw.pop("address", 0),  # type: ignore[arg-type]
                     type=type_, word_order=order, **kw)  # type: ignore[arg-type]


# --- round trips --------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.sampled_from(("u16", "s16", "u32", "s32")), st.sampled_from(WORD_ORDERS),
       st.sampled_from((1.0, 0.1, 0.01, 10.0)), st.sampled_from((0.0, -40.0, 273.15)), st.data())
def test_integer_types_round_trip_registers(type_: str, order: str, scale: float, offset: float,
                                            data: st.DataObject) -> None:
    s = spec(type_, order, scale=scale, offset=offset)
    regs = data.draw(st.lists(reg16, min_size=s.count, max_size=s.count))
    value, quality = decode_point(s, regs)
    assert quality == Quality.GOOD and value is not None
    assert encode_point(s, value) == regs


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(TYPES), st.sampled_from(WORD_ORDERS), st.data())
def test_raw_values_round_trip_through_every_order(type_: str, order: str, data: st.DataObject) -> None:
    lo, hi = RAW_RANGE[type_]
    raw: float
    if type_ == "f32":
        raw = data.draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
    else:
        raw = data.draw(st.integers(lo, hi))
    s = spec(type_, order)
    regs = encode_point(s, raw)
    assert len(regs) == REGISTER_COUNT[type_] and all(0 <= r <= 0xFFFF for r in regs)
    assert decode_point(s, regs) == (raw, Quality.GOOD)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(WORD_ORDERS), st.lists(reg16, min_size=2, max_size=2))
def test_f32_registers_round_trip(order: str, regs: list[int]) -> None:
    s = spec("f32", order)
    value, _ = decode_point(s, regs)
    assume(value is not None)
    assert encode_point(s, value) == regs


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(TYPES), st.sampled_from(WORD_ORDERS), st.sampled_from((1.0, 0.1, 1e-30, 1e30)),
       st.lists(reg16, min_size=2, max_size=2))
def test_decode_never_crashes_on_any_registers(type_: str, order: str, scale: float, regs: list[int]) -> None:
    _, hi = RAW_RANGE[type_]
    s = spec(type_, order, scale=scale, invalid=(hi,), min=-1e6, max=1e6)
    value, quality = decode_point(s, regs[:s.count])
    assert isinstance(quality, Quality)
    if value is None:
        assert quality == Quality.MISSING
    else:
        assert math.isfinite(value)
        assert quality in (Quality.GOOD, Quality.OUT_OF_RANGE)


# --- byte orders, against hand-computed wire bytes ------------------------------------------------

def test_badc_example_from_devices_md() -> None:
    # 23.45 as an IEEE float is 41 BB 99 9A; byte-swapped words put BB 41 9A 99 on the wire.
    assert struct.pack(">f", 23.45).hex() == "41bb999a"
    wire = [0xBB41, 0x9A99]
    assert encode_point(spec("f32", "BADC"), 23.45) == wire
    value, quality = decode_point(spec("f32", "BADC"), wire)
    assert quality == Quality.GOOD and value == pytest.approx(23.45, abs=1e-5)
    wrong, _ = decode_point(spec("f32", "ABCD"), wire)  # forgetting the byte swap
    assert wrong == pytest.approx(-0.003, abs=5e-4)


@pytest.mark.parametrize("order, wire", [
    ("ABCD", [0x1234, 0x5678]), ("CDAB", [0x5678, 0x1234]), ("BADC", [0x3412, 0x7856]), ("DCBA", [0x7856, 0x3412]),
])
def test_u32_word_orders(order: str, wire: list[int]) -> None:
    assert decode_point(spec("u32", order), wire) == (0x12345678, Quality.GOOD)
    assert encode_point(spec("u32", order), 0x12345678) == wire


def test_dfrobot_low_word_first_rainfall() -> None:
    # devices.md: DFRobot SEN0575 32-bit values are LOW WORD FIRST, mm = (lo | hi << 16) / 10000
    s = spec("u32", "CDAB", scale=0.0001)
    assert decode_point(s, [0x86A0, 0x0001]) == (10.0, Quality.GOOD)  # 0x186A0 = 100000
    assert encode_point(s, 10.0) == [0x86A0, 0x0001]


def test_16_bit_byte_swap_and_sign() -> None:
    assert decode_point(spec("s16"), [0xFF38]) == (-200, Quality.GOOD)
    assert decode_point(spec("s16", "BADC"), [0x38FF]) == (-200, Quality.GOOD)
    assert decode_point(spec("u16", "DCBA"), [0x3412]) == (0x1234, Quality.GOOD)


def test_scale_gives_clean_decimals() -> None:
    s = spec("s16", scale=0.1)
    assert decode_point(s, [3])[0] == 0.3  # 3 * 0.1 would be 0.30000000000000004
    assert decode_point(s, [0xFE0C])[0] == -50.0
    assert encode_point(s, 23.4) == [234]


# --- invalid markers and range -----------------------------------------------------------------

def test_invalid_markers_are_missing_never_numbers() -> None:
    assert decode_point(spec("s16", scale=0.1, invalid=(32767,)), [0x7FFF]) == (None, Quality.MISSING)
    assert decode_point(spec("u16", invalid=(65535,)), [0xFFFF]) == (None, Quality.MISSING)
    assert decode_point(spec("f32"), [0x7FC0, 0x0000]) == (None, Quality.MISSING)  # NaN
    assert decode_point(spec("f32"), [0x7F80, 0x0000]) == (None, Quality.MISSING)  # +inf
    assert decode_point(spec("f32", invalid=(0xFFFFFFFF,)), [0xFFFF, 0xFFFF]) == (None, Quality.MISSING)
    assert decode_point(spec("s16", invalid=(32767,)), [0x7FFE]) == (32766, Quality.GOOD)


def test_out_of_range_keeps_the_value_and_flags_it() -> None:
    s = spec("s16", scale=0.1, min=-50.0, max=60.0)
    assert decode_point(s, [600]) == (60.0, Quality.GOOD)
    assert decode_point(s, [601]) == (60.1, Quality.OUT_OF_RANGE)
    assert decode_point(s, [0x10000 - 501]) == (-50.1, Quality.OUT_OF_RANGE)


def test_encode_missing_and_refusals() -> None:
    s = spec("s16", scale=0.1, invalid=(32767,), name="air_temperature")
    assert encode_point(s, None) == [0x7FFF]
    assert encode_point(spec("s32", "CDAB", invalid=(-1,)), None) == [0xFFFF, 0xFFFF]
    with pytest.raises(ValueError, match="air_temperature.*invalid marker"):
        encode_point(s, 3276.7)
    with pytest.raises(ValueError, match=r"air_temperature.*outside s16 range"):
        encode_point(s, 4000.0)
    with pytest.raises(ValueError, match="no invalid marker"):
        encode_point(spec("u16"), None)
    with pytest.raises(ValueError, match="finite"):
        encode_point(spec("f32"), math.nan)


def test_decode_rejects_wrong_register_count_and_values() -> None:
    with pytest.raises(ValueError, match="needs 2 register"):
        decode_point(spec("u32"), [1])
    with pytest.raises(ValueError, match="0..65535"):
        decode_point(spec("u16"), [70000])


def test_point_spec_rejects_bad_fields() -> None:
    with pytest.raises(SpecError) as err:
        spec("u8")
    assert err.value.field == "type"
    with pytest.raises(SpecError, match="word_order"):
        spec("u32", "ADCB")
    with pytest.raises(SpecError, match="address"):
        spec("u32", address=0xFFFF)  # needs two registers
    with pytest.raises(SpecError, match="invalid"):
        spec("s16", invalid=(65535,))


# --- read planning -----------------------------------------------------------------------------

point_sets = st.lists(
    st.tuples(st.sampled_from((3, 4)), st.integers(0, 600), st.sampled_from(TYPES)), min_size=0, max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(point_sets, st.integers(2, MAX_READ_REGISTERS), st.integers(0, 12))
def test_plan_reads_covers_every_point_once_within_limits(raw: list[tuple[int, int, str]], max_regs: int,
                                                          gap: int) -> None:
    points = [PointSpec(name=f"p{i}", function=f, address=a, type=t) for i, (f, a, t) in enumerate(raw)]
    blocks = plan_reads(points, max_registers=max_regs, max_gap=gap)
    covered = [p.name for b in blocks for p in b.points]
    assert sorted(covered) == sorted(p.name for p in points)
    for b in blocks:
        assert 1 <= b.count <= max_regs <= MAX_READ_REGISTERS
        for p in b.points:
            assert p.function == b.function
            assert b.address <= p.address and p.address + p.count <= b.address + b.count
        assert b.address == min(p.address for p in b.points)
        assert b.address + b.count == max(p.address + p.count for p in b.points)
    for a, b in pairwise(blocks):  # greedy: the next block could not have joined this one
        assert (a.function, a.address) <= (b.function, b.address)
        if a.function == b.function:
            first = b.points[0]
            end = a.address + a.count
            assert first.address - end > gap or max(end, first.address + first.count) - a.address > max_regs


def test_plan_reads_coalesces_small_gaps_and_splits_large_ones() -> None:
    pts = [PointSpec("a", 4, 0), PointSpec("b", 4, 10), PointSpec("c", 4, 13, "u32"), PointSpec("d", 3, 14)]
    blocks = plan_reads(pts, max_gap=8)
    assert [(b.function, b.address, b.count, [p.name for p in b.points]) for b in blocks] == [
        (3, 14, 1, ["d"]), (4, 0, 1, ["a"]), (4, 10, 5, ["b", "c"]),
    ]
    assert [b.count for b in plan_reads(pts, max_gap=9)] == [1, 15]
    assert len(plan_reads([PointSpec(f"x{i}", 4, i) for i in range(300)])) == 3


def test_plan_reads_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="max_registers"):
        plan_reads([], max_registers=126)
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([], max_gap=-1)
    with pytest.raises(ValueError, match="listed twice"):
        plan_reads([PointSpec("a", 4, 0), PointSpec("a", 4, 1)])
    with pytest.raises(ValueError, match="needs 2 registers"):
        plan_reads([PointSpec("a", 4, 0, "f32")], max_registers=1)
