"""The Modbus device family's profiles, decoded against frames built from devices.md's own numbers.

Request frames come from our read planner and are compared byte for byte with devices.md's example
queries; reply frames are devices.md's examples or built by hand from its register tables, parsed by
pymodbus's RTU framer (the library the driver uses) and decoded with the profile. Also: property
tests for the counter codec and the derived rates, and clear errors for bad counter options.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from agent.rates import CounterRates
from core.errors import ConfigError
from core.reading import Quality, Reading
from drivers.modbus.codec import (
    MAX_READ_REGISTERS,
    RAW_RANGE,
    counter_delta,
    decode_point,
    encode_point,
    plan_reads,
    raw_count,
)
from drivers.modbus.profile import PROFILE_DIR, CounterSpec, LineDefaults, PointSpec, SpecError, load_profile
from drivers.modbus.sim_slave import crc16

FAMILY = ("vaisala_wxt530", "lufft_ws", "renke_wind_speed", "renke_wind_direction", "small_weather_station",
          "dfrobot_sen0575", "pm_transmitter", "outdoor_six_gas")


def frame(hexstr: str) -> bytes:
    body = bytes.fromhex(hexstr)
    return body + crc16(body).to_bytes(2, "little")


def request(profile: str, unit: int, points: list[str] | None = None) -> list[bytes]:
    """The RTU request frames our planner sends for these points."""
    prof = load_profile(profile)
    specs = [prof.point(p) for p in points] if points else list(prof.points)
    framer = FramerRTU(DecodePDU(False))
    out = []
    for b in plan_reads(specs, prof.max_registers_per_read, prof.max_read_gap):
        cls = ReadHoldingRegistersRequest if b.function == 3 else ReadInputRegistersRequest
        out.append(framer.buildFrame(cls(address=b.address, count=b.count, dev_id=unit)))
    return out


def decode_reply(profile: str, reply: bytes, unit: int, first: int) -> dict[str, tuple[float | None, Quality]]:
    """Parse an RTU reply with pymodbus's framer and decode every profile point inside it."""
    used, pdu = FramerRTU(DecodePDU(False)).handleFrame(reply, unit, 0)
    assert pdu is not None and used == len(reply), f"pymodbus rejected {reply.hex(' ')}"
    regs = list(pdu.registers)
    out = {}
    for p in load_profile(profile).points:
        if p.function == pdu.function_code and first <= p.address and p.address + p.count <= first + len(regs):
            out[p.name] = decode_point(p, regs[p.address - first:p.address - first + p.count])
    return out


def test_every_profile_loads_and_reads_in_coalesced_requests() -> None:
    shipped = {p.stem for p in PROFILE_DIR.glob("*.toml")}
    assert set(FAMILY) <= shipped
    for name in FAMILY:
        prof = load_profile(name)
        blocks = plan_reads(prof.points, prof.max_registers_per_read, prof.max_read_gap)
        assert sorted(p.name for b in blocks for p in b.points) == sorted(p.name for p in prof.points)
        assert all(b.count <= MAX_READ_REGISTERS for b in blocks)
        # contiguous points of one device go in one request
        for b in blocks:
            assert len({p.function for p in b.points}) == 1


@pytest.mark.parametrize("name, line, unit, function", [
    ("lufft_ws", LineDefaults(19200, "E", 1, 8), 1, 4),               # "default line 19200 8E1"
    ("renke_wind_speed", LineDefaults(4800, "N", 1, 8), 1, 3),        # "Default 4800 8N1, slave 1, function 03 only"
    ("renke_wind_direction", LineDefaults(4800, "N", 1, 8), 1, 3),
    ("small_weather_station", LineDefaults(4800, "N", 1, 8), 1, 3),   # holding registers (line: family default)
    ("dfrobot_sen0575", LineDefaults(9600, "N", 1, 8), 0xC0, 4),      # "9600 8N1, slave 0xC0. Function 04"
    ("pm_transmitter", LineDefaults(9600, "N", 1, 8), 1, 3),          # "9600 8N1, slave 1, holding 0-9"
    ("outdoor_six_gas", LineDefaults(9600, "N", 1, 8), 255, 3),       # "slave 255"
])
def test_line_defaults_and_functions_match_devices_md(name: str, line: LineDefaults, unit: int, function: int) -> None:
    prof = load_profile(name)
    assert (prof.line, prof.default_unit) == (line, unit)
    assert {p.function for p in prof.points} == {function}


def test_renke_wind_speed_example_frames() -> None:
    # devices.md: `01 03 00 00 00 01 84 0A` -> `01 03 02 00 56 38 7A` = 8.6 m/s
    assert request("renke_wind_speed", 1) == [bytes.fromhex("010300000001840A")]
    got = decode_reply("renke_wind_speed", bytes.fromhex("0103020056387A"), 1, 0)
    assert got == {"wind_speed": (8.6, Quality.GOOD)}


def test_renke_wind_direction_example_frames() -> None:
    # devices.md: `01 03 00 00 00 02 C4 0B` -> `01 03 04 00 02 00 5A DB C8` = sector 2, 90 deg
    assert request("renke_wind_direction", 1) == [bytes.fromhex("010300000002C40B")]
    got = decode_reply("renke_wind_direction", bytes.fromhex("010304000200 5ADBC8".replace(" ", "")), 1, 0)
    assert got == {"wind_sector": (2, Quality.GOOD), "wind_direction": (90, Quality.GOOD)}


def test_dfrobot_low_word_first_and_the_example_query() -> None:
    # devices.md: "Read cumulative: C0 04 00 08 00 02 E0 D8"; mm = (lo | hi << 16) / 10000
    assert request("dfrobot_sen0575", 0xC0, ["rainfall_total"]) == [bytes.fromhex("C00400080002E0D8")]
    # 123.4567 mm = 1234567 = 0x0012D687: low word D687 first, then 0012
    got = decode_reply("dfrobot_sen0575", frame("C00404D6870012"), 0xC0, 8)
    assert got["rainfall_total"] == (pytest.approx(123.4567), Quality.GOOD)
    # the whole poll: 0x0006..0x000C in one request
    assert request("dfrobot_sen0575", 0xC0) == [frame("C00400060007")]
    reply = frame("C0040E" "2710 0000" "D687 0012" "01C2 0000" "05A0".replace(" ", ""))
    got = decode_reply("dfrobot_sen0575", reply, 0xC0, 6)
    assert got == {"rainfall_window": (pytest.approx(1.0), Quality.GOOD),
                   "rainfall_total": (pytest.approx(123.4567), Quality.GOOD),
                   "tip_count": (450, Quality.GOOD), "working_minutes": (1440, Quality.GOOD)}


def test_small_weather_station_table() -> None:
    # devices.md "501..514" are 1-based: the request starts at wire address 500 (0x01F4), 14 registers
    assert request("small_weather_station", 1) == [frame("010301F4000E")]
    regs = [325, 270, 6, 270, 653, 0x10000 - 52, 556, 35, 60, 1013, 0x0001, 0xE240, 0, 125]
    reply = frame("01031C" + "".join(f"{r:04X}" for r in regs))
    got = decode_reply("small_weather_station", reply, 1, 500)
    assert {k: v for k, (v, _) in got.items()} == {
        "wind_speed": 3.25, "wind_direction": 270, "wind_sector": 6, "wind_direction_2": 270,
        "relative_humidity": 65.3, "air_temperature": -5.2, "noise": 55.6, "pm25": 35, "pm10": 60,
        "air_pressure": 101.3, "illuminance": 123456, "rain": 12.5}  # lux: hi word 0x0001, lo word 0xE240
    assert all(q == Quality.GOOD for _, q in got.values())


def test_pm_transmitter_and_six_gas_maps() -> None:
    # PM transmitter: "holding 0-9; reg 4 = PM2.5, reg 9 = PM10"
    assert request("pm_transmitter", 1) == [frame("010300040006")]
    got = decode_reply("pm_transmitter", frame("01030C" + "0023" + "0000" * 4 + "003C"), 1, 4)
    assert got == {"pm25": (35, Quality.GOOD), "pm10": (60, Quality.GOOD)}
    # six-gas: "3 SO2, 4 NO2, 5 CO, 6 O3, 7 PM2.5, 8 PM10, 9 temp, 10 humidity, slave 255"
    assert request("outdoor_six_gas", 255) == [frame("FF0300030008")]
    regs = [9, 41, 8, 120, 35, 60, 0x10000 - 35, 655]
    got = decode_reply("outdoor_six_gas", frame("FF0310" + "".join(f"{r:04X}" for r in regs)), 255, 3)
    assert {k: v for k, (v, _) in got.items()} == {"so2": 9, "no2": 41, "co": 0.8, "o3": 120, "pm25": 35,
                                                    "pm10": 60, "air_temperature": -3.5, "relative_humidity": 65.5}


def test_lufft_shares_the_wxt530_addresses_and_adds_rain_and_kmh() -> None:
    lufft, wxt = load_profile("lufft_ws"), load_profile("vaisala_wxt530")
    for p in lufft.points:
        if 0 < p.address < 0x24:
            q = wxt.point(p.name)
            assert (p.address, p.type, p.scale, p.unit, p.invalid) == (q.address, q.type, q.scale, q.unit, q.invalid)
    # register 0: the Lufft profile reads it whole, the WXT530 one as its two bytes
    assert (lufft.point("model_version").address, lufft.point("model_version").bits) == (0, None)
    assert [(p.address, p.bits) for p in wxt.points if p.address == 0] == [(0, (8, 15)), (0, (0, 7))]
    assert request("lufft_ws", 1)[2:] == [frame("010400300003"), frame("010400530004")]  # 48-50, 83-86
    got = decode_reply("lufft_ws", frame("010406" "04D2" "0000" "01F4"), 1, 48)  # 12.34 mm, 5.00 mm/h (x100)
    assert got == {"rain_total": (12.34, Quality.GOOD), "rain_intensity": (5.0, Quality.GOOD)}
    got = decode_reply("lufft_ws", frame("010408" "0A28" "0000" "1B58" "FFFF"), 1, 83)  # km/h x100; FFFF invalid
    assert got == {"wind_speed_kmh": (26.0, Quality.GOOD), "wind_speed_kmh_min": (0.0, Quality.GOOD),
                   "wind_speed_kmh_max": (70.0, Quality.GOOD), "wind_speed_kmh_avg": (None, Quality.MISSING)}
    assert lufft.point("rain_total").counter == CounterSpec(65536, "mm/h", 3600, 300.0)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FAMILY), st.data())
def test_every_point_of_every_profile_round_trips(name: str, data: st.DataObject) -> None:
    prof = load_profile(name)
    spec = data.draw(st.sampled_from(prof.points))
    raw_lo, raw_hi = RAW_RANGE[spec.type] if spec.bits is None else (0, 1 << (spec.bits[1] - spec.bits[0] + 1))
    lo = max(spec.min if spec.min is not None else 0.0, raw_lo * spec.scale)
    hi = min(spec.max if spec.max is not None else 1000.0, (raw_hi - 1) * spec.scale)  # below the invalid marker
    value = data.draw(st.floats(lo, hi))
    regs = encode_point(spec, value)
    back, quality = decode_point(spec, regs)
    assert quality == Quality.GOOD and back == pytest.approx(value, abs=spec.scale / 2 + 1e-9)
    assert encode_point(spec, back) == regs


# --- counters ------------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.sampled_from((2, 100, 65536, 2**32)), st.data())
def test_counter_delta_is_the_advance_modulo_the_wrap(wrap: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, wrap - 1))
    step = data.draw(st.integers(0, wrap - 1))
    now = (start + step) % wrap
    assert counter_delta(start, now, wrap) == (step, now < start)


def test_counter_delta_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="wrap"):
        counter_delta(0, 1, 1)
    with pytest.raises(ValueError, match="current"):
        counter_delta(0, 70000, 65536)


def counter_spec(type_: str = "u16", scale: float = 0.01, wrap: int = 65536, max_rate: float | None = None,
                 word_order: str = "ABCD") -> PointSpec:
    return PointSpec("rain", 4, 48, type_, word_order, scale, counter=CounterSpec(wrap, "mm/h", 3600, max_rate))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(("u16", "s16", "u32")), st.sampled_from((1.0, 0.01, 0.1)), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.integers(0, 3000), st.floats(1.0, 600.0)), min_size=1, max_size=20))
def test_rates_stay_right_across_wraps(type_: str, scale: float, start: int, steps: list) -> None:
    """Feed encoded counter registers through decode + CounterRates: every rate equals the true advance."""
    wrap = 2 ** (16 * (2 if type_ == "u32" else 1))
    spec = counter_spec(type_, scale, wrap)
    rates = CounterRates([spec])
    raw, ts = start % wrap, 1000.0
    lo = -(wrap // 2) if type_.startswith("s") else 0

    def reading() -> Reading:
        shown = raw - wrap if lo < 0 and raw >= wrap // 2 else raw  # a signed register shows it negative
        value, q = decode_point(spec, encode_point(spec, shown * scale))
        return Reading("g", "rain", value, "mm", ts, q)

    assert [r.point for r in rates.derive([reading()])] == ["rain"]  # nothing to compare with yet
    for advance, dt in steps:
        before = raw
        raw, ts = (raw + advance) % wrap, ts + dt
        counter, rate = rates.derive([reading()])
        assert rate.point == "rain_rate" and rate.unit == "mm/h" and rate.quality & Quality.DERIVED
        assert rate.value == pytest.approx(advance * scale / dt * 3600, rel=1e-9, abs=1e-9)
        wrapped = raw < before
        assert bool(rate.quality & Quality.WRAPPED) == wrapped == bool(counter.quality & Quality.WRAPPED)


def test_reset_gives_no_rate_and_outages_are_bridged() -> None:
    spec = counter_spec(max_rate=300.0)
    rates = CounterRates([spec])
    rates.derive([Reading("g", "rain", 100.0, "mm", 0.0)])
    _, rate = rates.derive([Reading("g", "rain", 100.5, "mm", 3600.0)])
    assert rate.value == pytest.approx(0.5)
    _, reset = rates.derive([Reading("g", "rain", 0.2, "mm", 3660.0)])  # cleared: looks like +655 mm in a minute
    assert reset.value is None and reset.quality == Quality.DERIVED | Quality.MISSING
    assert "reset" in (reset.text or "")
    # a failed read in between gives no rate and does not break the next one
    failed = Reading("g", "rain", None, "mm", 3700.0, Quality.COMM_FAILURE)
    assert rates.derive([failed]) == [failed]
    _, rate = rates.derive([Reading("g", "rain", 0.8, "mm", 7260.0)])
    assert rate.value == pytest.approx(0.6)
    assert rates.derive([Reading("g", "rain", 0.8, "mm", 7260.0)])[1:] == []  # same sample again: no rate
    assert raw_count(spec, 655.35) == 65535


def _profile_doc(counter: str, type_: str = "u16", extra: str = "") -> str:
    return (f'name = "g"\nmanufacturer = "Acme"\nmodel = "G"\n[line]\nbaudrate = 9600\nparity = "N"\n'
            f'[points.rain]\nfunction = 4\naddress = 0\ntype = "{type_}"\nscale = 0.1\ncounter = {counter}\n{extra}')


@pytest.mark.parametrize("counter, type_, extra, key, words", [
    ("{ wrap = 1 }", "u16", "", "points.rain.counter.wrap", "2..4294967296"),
    ("{ wrap = 4294967296 }", "u16", "", "points.rain.counter", "at most 65536 for u16"),
    ("{ rate_per_s = 0 }", "u16", "", "points.rain.counter.rate_per_s", "positive number"),
    ("{ max_rate = -1 }", "u16", "", "points.rain.counter.max_rate", "positive number"),
    ("{ colour = 1 }", "u16", "", "points.rain.counter.colour", "one of"),
    ("5", "u16", "", "points.rain.counter", "true or a table"),
    ("true", "f32", "", "points.rain.counter", "integer type"),
    ("true", "u16", "[points.rain_rate]\nfunction = 4\naddress = 1\n", "points.rain_rate", "derived rate"),
])
def test_bad_counter_options_name_the_key(tmp_path: Path, counter: str, type_: str, extra: str, key: str,
                                          words: str) -> None:
    path = tmp_path / "g.toml"
    path.write_text(_profile_doc(counter, type_, extra))
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    assert err.value.key == key and str(path) in str(err.value) and words in str(err.value)


def test_counter_true_takes_the_types_wrap(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(_profile_doc("true", "u32"))
    assert load_profile(str(path)).point("rain").counter == CounterSpec(2**32)
    with pytest.raises(SpecError, match="counter"):
        PointSpec("x", 4, 0, "u16", counter="yes")  # type: ignore[arg-type]
