"""Underground utility devices: profiles against devices-city.md section 2's own numbers and example
frames, each profile read from its simulator over a real RTU pty by our driver, third-party reads
with mbpoll (byte orders, the KELLER read rules), and the physics behind the simulators.
(Every model is also read with mbpoll over RTU and TCP by tests/test_sims_family.py.)"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import shutil
import struct
from typing import Any

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

from core.reading import Quality
from drivers.modbus.codec import decode_point, plan_reads
from drivers.modbus.driver import ModbusDevice, ModbusLink
from drivers.modbus.profile import LineDefaults, load_profile
from drivers.modbus.sim import MODELS, make_model
from drivers.modbus.sim_slave import crc16, serving
from drivers.physics.utilities import ChamberLevel, Cover, Methane, PipePressure
from drivers.physics.weather import WeatherModel

UTILITIES = ("vega_vegapuls_c21", "hilink_ld8001h", "keller_series30", "gas_module_ch4", "witmotion_wt901c485")
FROZEN = 1_750_050_000.0
MBPOLL = shutil.which("mbpoll")
needs_mbpoll = pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed (apt-get install -y mbpoll)")
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def frame(hexstr: str) -> bytes:
    body = bytes.fromhex(hexstr.replace(" ", ""))
    return body + crc16(body).to_bytes(2, "little")


def requests(profile: str, unit: int, points: list[str] | None = None) -> list[bytes]:
    prof = load_profile(profile)
    specs = [prof.point(p) for p in points] if points else list(prof.points)
    framer = FramerRTU(DecodePDU(False))
    return [framer.buildFrame(ReadHoldingRegistersRequest(address=b.address, count=b.count, dev_id=unit))
            for b in plan_reads(specs, prof.max_registers_per_read, prof.max_read_gap)]


def decode_reply(profile: str, reply: bytes, unit: int, first: int) -> dict[str, tuple[float | None, Quality]]:
    used, pdu = FramerRTU(DecodePDU(False)).handleFrame(reply, unit, 0)
    assert pdu is not None and used == len(reply), f"pymodbus rejected {reply.hex(' ')}"
    regs = list(pdu.registers)
    return {p.name: decode_point(p, regs[p.address - first:p.address - first + p.count])
            for p in load_profile(profile).points if first <= p.address and p.address + p.count <= first + len(regs)}


def f32(value: float) -> tuple[int, int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return hi, lo


@pytest.mark.parametrize("name, line, unit", [
    ("vega_vegapuls_c21", LineDefaults(9600, "N", 1, 8), 246),       # "address 246, 9600, parity none, 1 stop"
    ("hilink_ld8001h", LineDefaults(115200, "N", 1, 8), 1),          # "address 1, 115200 baud"
    ("keller_series30", LineDefaults(9600, "N", 1, 8), 1),           # "9600 8N1, address 1 by default"
    ("gas_module_ch4", LineDefaults(9600, "N", 1, 8), 1),            # "Address 1, 9600 8N1"
    ("witmotion_wt901c485", LineDefaults(9600, "N", 1, 8), 0x50),    # "address 0x50", class default 9600
])
def test_line_settings_and_units_match_the_reference(name: str, line: LineDefaults, unit: int) -> None:
    prof = load_profile(name)
    assert (prof.line, prof.default_unit, {p.function for p in prof.points}) == (line, unit, {3})
    assert MODELS[name] is not None


def test_vegapuls_pv_is_a_word_swapped_float_beside_its_unit_and_status() -> None:
    assert requests("vega_vegapuls_c21", 246) == [frame("F6 03 0064 0008"), frame("F6 03 08FC 0008")]
    hi, lo = f32(3.625)
    regs = [0x0000, 0, 0, 0, 45, 0, lo, hi]  # 100 status, 104 unit = 45 (m), 106 PV in CDAB
    got = decode_reply("vega_vegapuls_c21", frame("F60310" + "".join(f"{r:04X}" for r in regs)), 246, 100)
    assert got == {"pv_status": (0, Quality.GOOD), "pv_unit": (45, Quality.GOOD), "level": (3.625, Quality.GOOD)}
    regs[0], regs[6], regs[7] = 0x0001, 0x0000, 0x7FC0  # PV flagged invalid, and NaN: missing
    got = decode_reply("vega_vegapuls_c21", frame("F60310" + "".join(f"{r:04X}" for r in regs)), 246, 100)
    assert got["pv_status"] == (1, Quality.GOOD) and got["level"] == (None, Quality.MISSING)
    hi, lo = f32(1.625)
    regs = [0, 3, 0, hi, lo, 0, 0, 0x0208]  # NE107 = 3, distance ABCD, device status in the low byte
    got = decode_reply("vega_vegapuls_c21", frame("F60310" + "".join(f"{r:04X}" for r in regs)), 246, 2300)
    assert got == {"ne107_code": (3, Quality.GOOD), "distance": (1.625, Quality.GOOD),
                   "device_status": (8, Quality.GOOD)}


def test_hilink_level_air_gap_and_install_height_in_metres() -> None:
    assert requests("hilink_ld8001h", 1) == [frame("01 03 0001 0005")]
    regs = [1850, 0, 3150, 0, 500]  # 1.85 m gap, 3.15 m level, installed at 500 cm
    got = decode_reply("hilink_ld8001h", frame("01030A" + "".join(f"{r:04X}" for r in regs)), 1, 1)
    assert {k: v for k, (v, _) in got.items()} == {"air_gap": 1.85, "level": 3.15, "install_height": 5.0}


def test_keller_example_frame_and_its_read_rules() -> None:
    # devices-city.md: `01 03 00 02 00 02 65 CB` -> `...04 3F 75 F0 7B` = 0.9607 bar
    assert requests("keller_series30", 1, ["pressure"]) == [bytes.fromhex("010300020002 65CB".replace(" ", ""))]
    got = decode_reply("keller_series30", frame("010304 3F75F07B"), 1, 2)
    assert got["pressure"][0] == pytest.approx(0.9607, abs=5e-5) and got["pressure"][1] == Quality.GOOD
    prof = load_profile("keller_series30")
    blocks = plan_reads(prof.points, prof.max_registers_per_read, prof.max_read_gap)
    assert all(b.count <= 4 and b.address % 2 == 0 for b in blocks)  # "max 4 registers", "odd start: exception 2"
    for word in (0x7FC0, 0x7F80, 0xFF80):  # NaN = inactive, +inf / -inf = over / underflow
        got = decode_reply("keller_series30", frame(f"010308 {word:04X}0000 7FC00000"), 1, 2)
        assert got == {"pressure": (None, Quality.MISSING), "pressure_2": (None, Quality.MISSING)}


def test_gas_module_example_query_and_register_table() -> None:
    assert requests("gas_module_ch4", 1) == [bytes.fromhex("01030000000AC5CD")]  # the doc's own frame
    regs = [0x2400, 123, 200, 500, 1000, 0x0001, 0, 650, 0x0B00, 955]
    got = decode_reply("gas_module_ch4", frame("010314" + "".join(f"{r:04X}" for r in regs)), 1, 0)
    assert {k: v for k, (v, _) in got.items()} == {
        "gas_unit": 2, "decimals_code": 4, "concentration": 12.3, "low_alarm_level": 20, "high_alarm_level": 50,
        "full_scale": 100, "status": 1, "temperature": 15.0, "gas_type": 11, "relative_humidity": 95.5}
    assert load_profile("gas_module_ch4").point("concentration").max is None  # over range must still alarm


def test_witmotion_angles_and_acceleration_from_one_twelve_register_read() -> None:
    assert requests("witmotion_wt901c485", 0x50) == [frame("50 03 0034 000C")]  # "12 registers from 0x34"
    regs = [0xF800, 0, 0x0800, 1, 2, 3, 4, 5, 6, 0x4000, 0xE000, 0x8000]
    got = decode_reply("witmotion_wt901c485", frame("500318" + "".join(f"{r:04X}" for r in regs)), 0x50, 0x34)
    assert {k: v for k, (v, _) in got.items()} == {"acc_x": -1.0, "acc_y": 0.0, "acc_z": 1.0, "roll": 90.0,
                                                    "pitch": -45.0, "yaw": -180.0}


@pytest.mark.parametrize("model", UTILITIES)
async def test_our_driver_reads_each_simulator_over_a_real_rtu_pty(model: str) -> None:
    slave, sim = make_model(model, seed=3, start=FROZEN, clock=lambda: 0.0)
    prof = load_profile(model)
    async with (serving([slave], rtu=True, baudrate=prof.line.baudrate, parity=prof.line.parity) as info,
                ModbusLink.rtu(info["rtu_path"], prof.line, timeout_s=0.5) as link):
        readings = await ModbusDevice(model, link, slave.unit, prof).read()
    assert [r.point for r in readings] == [p.name for p in prof.points]
    for r in readings:
        want = sim.values[r.point]
        if want is None:
            assert (r.value, r.quality) == (None, Quality.MISSING), r.point
        else:
            spec = prof.point(r.point)
            tol = 1e-6 * max(1.0, abs(want)) if spec.type == "f32" else spec.scale / 2 + 1e-9
            assert r.quality == Quality.GOOD and r.value == pytest.approx(want, abs=tol), r.point
            assert r.unit == spec.unit


async def _mbpoll(*args: str) -> tuple[int, str, str]:
    assert MBPOLL is not None
    proc = await asyncio.create_subprocess_exec(MBPOLL, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode or 0, out.decode(), err.decode()


def _rtu(info: dict[str, Any], unit: int, baud: int = 9600) -> list[str]:
    return ["-m", "rtu", "-b", str(baud), "-P", "none", "-a", str(unit), "-o", "0.5", "-1", "-0"]


@needs_mbpoll
async def test_mbpoll_sees_the_vega_pv_in_both_byte_orders_and_its_address_at_200() -> None:
    slave, sim = make_model("vega_vegapuls_c21", seed=2, start=FROZEN, clock=lambda: 0.0, level_m=2.5)
    async with serving([slave], rtu=True, baudrate=9600, parity="N") as info:
        base = [*_rtu(info, 246), "-t", "4:float"]
        code, swapped, err = await _mbpoll(*base, "-r", "106", info["rtu_path"])  # mbpoll: low word first
        assert code == 0, err
        code, big, err = await _mbpoll(*base, "-B", "-r", "2002", info["rtu_path"])  # -B: high word first
        assert code == 0, err
        value = [float(ln.split()[-1]) for out in (swapped, big) for ln in out.splitlines() if ln.startswith("[")]
        assert value == [pytest.approx(sim.values["level"], rel=1e-5)] * 2 and 2.3 < value[0] < 2.7
        code, out, err = await _mbpoll(*_rtu(info, 246), "-r", "200", info["rtu_path"])
        assert code == 0 and re.search(r"^\[200\]:\s+246\s*$", out, re.MULTILINE), out + err


@needs_mbpoll
async def test_keller_simulator_refuses_what_a_series_30_refuses() -> None:
    slave, sim = make_model("keller_series30", seed=2, start=FROZEN, clock=lambda: 0.0)
    async with serving([slave], rtu=True, baudrate=9600, parity="N") as info:
        opts = [*_rtu(info, 1), "-t", "4:hex"]
        code, out, err = await _mbpoll(*opts, "-r", "2", "-c", "4", info["rtu_path"])
        assert code == 0, err
        code, _, err = await _mbpoll(*opts, "-r", "2", "-c", "6", info["rtu_path"])  # more than 4 registers
        assert code != 0 and "illegal data address" in err.lower(), err
        code, _, err = await _mbpoll(*opts, "-r", "3", "-c", "2", info["rtu_path"])  # odd start
        assert code != 0 and "illegal data address" in err.lower(), err


def test_chamber_fills_with_a_storm_and_drains_after() -> None:
    w = WeatherModel(2, start=FROZEN)
    storm = w.storms[0]
    level = ChamberLevel(2, storm.onset - 3600)
    before = level.advance(storm.onset, w.advance(storm.onset).rain_rate_mmh)
    t, peak = storm.onset, before
    while t < storm.end + 4 * 3600:
        t += 60
        peak = max(peak, level.advance(t, w.advance(t).rain_rate_mmh))
    assert 0.35 < before < 0.45 and peak > before + 0.01 * storm.peak_mmh  # ~5 cm per 1 mm/h of peak
    assert level.advance(t + 12 * 3600, 0.0) < 0.45  # back to dry weather
    burst = ChamberLevel(0, 0.0, inflow_m_per_h=3600.0)
    assert 4.99 < burst.advance(10.0) <= 5.0  # capped at the chamber's depth (surcharged)


def test_methane_warms_up_leaks_and_faults() -> None:
    gas = Methane(1, 0.0, warmup_s=60.0)
    assert gas.advance(30.0) == (0.0, 0x00)
    lel, status = gas.advance(600.0)
    assert 0 <= lel <= 2 and status == 0x01
    gas.set_fault("leak", 600.0)
    assert gas.advance(900.0)[1] == 0x06 and gas.advance(900.0)[0] > 50  # ramped to ~60 %LEL
    gas.set_fault("sensor_fault", 900.0)
    assert gas.advance(960.0)[1] == 0x03
    with pytest.raises(ValueError, match="methane fault"):
        gas.set_fault("fire", 0.0)


def test_cover_tilts_when_opened_and_settles_back_to_its_baseline() -> None:
    cover = Cover(4, 0.0, baseline_deg=(1.0, -1.5))
    closed = cover.state(10.0)
    assert not closed.open and abs(closed.pitch_deg + 1.5) < 0.3 and math.isclose(
        math.hypot(*closed.acc_g), 1.0, abs_tol=0.05)
    cover.open(100.0)
    assert cover.state(101.0).pitch_deg < cover.state(110.0).pitch_deg
    opened = cover.state(110.0)
    assert opened.open and opened.pitch_deg > 75 and opened.acc_g[0] < -0.9
    cover.close(200.0)
    assert not cover.state(210.0).open


def test_main_pressure_dips_at_demand_peaks_and_collapses_on_a_burst() -> None:
    main = PipePressure(1, FROZEN)
    night = main.advance(FROZEN + (3 - 13) * 3600 + 86400)  # 03:00 local
    morning = main.advance(FROZEN + (7.5 - 13) * 3600 + 86400)
    assert night[0] > morning[0] + 0.4 and 10 < night[1] < 14
    main.burst_at = FROZEN
    assert main.advance(FROZEN + 60)[0] < 0.6
