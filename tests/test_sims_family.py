"""The Modbus family simulators: a third-party master (mbpoll, libmodbus) reads them over RTU and TCP,
their registers follow devices.md, their faults behave like a real line, and the physics is plausible
and repeatable."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from core.errors import DeviceTimeout, FrameError
from drivers.modbus.codec import decode_point, plan_reads
from drivers.modbus.driver import ModbusLink
from drivers.modbus.profile import LineDefaults, load_profile
from drivers.modbus.sim import MODELS, TIP_MM, make_model, parse_slaves
from drivers.modbus.sim_slave import RtuBus, serving, set_fault
from drivers.physics.air import AirModel, traffic_level
from drivers.physics.weather import WeatherModel

MBPOLL = shutil.which("mbpoll")
needs_mbpoll = pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed (apt-get install -y mbpoll)")
VALUE_LINE = re.compile(r"^\[(\d+)\]:\s+(-?\d+)(?: \(-?\d+\))?\s*$", re.MULTILINE)
FROZEN = 1_750_050_000.0  # 13:00 local: sun up, traffic moderate
NEW_MODELS = [m for m in MODELS if m != "vaisala_wxt530"]
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


async def mbpoll(*args: str) -> tuple[int, dict[int, int], str]:
    assert MBPOLL is not None
    proc = await asyncio.create_subprocess_exec(MBPOLL, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode or 0, {int(a): int(v) for a, v in VALUE_LINE.findall(out.decode())}, err.decode()


def target(info: dict[str, Any], tcp: bool, unit: int, line: LineDefaults, timeout: str = "0.5") -> list[str]:
    if tcp:
        return ["-m", "tcp", "-p", str(info["tcp_port"]), "-a", str(unit), "-o", timeout, "-1", "127.0.0.1"]
    parity = {"N": "none", "E": "even", "O": "odd"}[line.parity]
    return ["-m", "rtu", "-b", str(line.baudrate), "-P", parity, "-s", str(line.stopbits), "-a", str(unit),
            "-o", timeout, "-1", info["rtu_path"]]


@asynccontextmanager
async def one(model: str, unit: int | None = None,
              **kw: Any) -> AsyncIterator[tuple[dict[str, Any], Any, Any, LineDefaults]]:
    # a frozen clock: the values hold still between the simulator's refresh and mbpoll's read
    slave, sim = make_model(model, unit, seed=4, start=FROZEN, clock=lambda: 0.0, **kw)
    line = load_profile(model).line
    async with serving([slave], rtu=True, tcp_port=0, baudrate=line.baudrate, parity=line.parity) as info:
        yield info, slave, sim, line


@needs_mbpoll
@pytest.mark.parametrize("tcp", [False, True], ids=["rtu", "tcp"])
@pytest.mark.parametrize("model", NEW_MODELS)
async def test_mbpoll_reads_every_model_as_its_profile_says(model: str, tcp: bool) -> None:
    # libmodbus refuses RTU unit 255 (outside 1..247): the six-gas unit must be re-addressed on a real bus
    unit = 5 if model == "outdoor_six_gas" and not tcp else None
    async with one(model, unit) as (info, slave, sim, line):
        prof = load_profile(model)
        *opts, dev = target(info, tcp, slave.unit, line)
        for block in plan_reads(prof.points, prof.max_registers_per_read, prof.max_read_gap):
            kind = "3" if block.function == 4 else "4"
            code, values, err = await mbpoll(*opts, "-t", kind, "-0", "-r", str(block.address), "-c",
                                             str(block.count), dev)
            assert code == 0, err
            regs = [values[a] & 0xFFFF for a in range(block.address, block.address + block.count)]
            for p in block.points:
                got, _ = decode_point(p, regs[p.address - block.address:p.address - block.address + p.count])
                want = sim.values[p.name]
                if want is None:
                    assert got is None, p.name
                elif p.counter is None:
                    clamped = min(max(want, p.min or -1e9), p.max or 1e9)
                    assert got == pytest.approx(clamped, abs=p.scale / 2 + 1e-6), p.name


@needs_mbpoll
async def test_mbpoll_reads_the_dfrobot_32_bit_values_low_word_first() -> None:
    async with one("dfrobot_sen0575", tip_start=1_000_000) as (info, slave, sim, line):
        *opts, dev = target(info, False, 0xC0, line)
        # mbpoll's 32-bit type is little-endian word order by default: exactly the SEN0575's layout
        code, values, err = await mbpoll(*opts, "-t", "3:int", "-0", "-r", "8", "-c", "2", dev)
        assert code == 0, err
        assert values[10] == 1_000_000 and values[8] & 0xFFFFFFFF == round(1_000_000 * TIP_MM * 10000) % 2**32
        code, values, err = await mbpoll(*opts, "-t", "3:hex", "-0", "-r", "0", "-c", "6", dev)
        assert code == 0, err
        assert sim.input[0] == 0x00C0 and sim.input[1] == 0x7343 and sim.input[2] == 0xC0  # PID/VID, address


@needs_mbpoll
async def test_installer_writes_reset_the_rain_counters() -> None:
    async with one("small_weather_station", rain_start_mm=12.3) as (info, slave, sim, line):
        *opts, dev = target(info, False, 1, line)
        code, values, err = await mbpoll(*opts, "-t", "4", "-r", "514", dev)  # devices.md numbering is 1-based
        assert (code, values) == (0, {514: 123}), err
        code, _, err = await mbpoll(*opts, "-t", "4", "-r", "24579", dev, "90")  # "write 90 to 24579 resets rain"
        assert code == 0, err
        code, values, err = await mbpoll(*opts, "-t", "4", "-r", "514", dev)
        assert (code, values) == (0, {514: 0}), err
    async with one("lufft_ws", rain_start_mm=5.0) as (info, slave, sim, line):
        *opts, dev = target(info, True, 1, line)
        code, values, _ = await mbpoll(*opts, "-t", "3", "-0", "-r", "48", dev)
        assert values == {48: 500}
        await mbpoll(*opts, "-t", "4", "-0", "-r", "7", dev, "1")
        code, values, _ = await mbpoll(*opts, "-t", "3", "-0", "-r", "48", dev)
        assert values == {48: 0}


@needs_mbpoll
async def test_wrong_line_settings_meet_silence_like_on_a_real_bus() -> None:
    async with one("renke_wind_speed") as (info, slave, sim, line):
        *opts, dev = target(info, False, 1, line, timeout="0.3")
        code, values, err = await mbpoll(*opts, "-r", "1", dev)
        assert code == 0 and values == {1: slave.holding[0]}, err
        for wrong in (["-b", "9600"], ["-s", "2"], ["-P", "odd"]):
            bad = opts + wrong  # later options override
            code, _, err = await mbpoll(*bad, "-r", "1", dev)
            assert code != 0 and "timed out" in err, wrong
        code, _, err = await mbpoll(*opts, "-r", "1", dev)
        assert code == 0, err


async def test_noise_between_frames_never_yields_wrong_data() -> None:
    async with one("dfrobot_sen0575") as (info, slave, sim, line):
        slave.set_fault("noise", noise_bytes=8)
        want = [sim.input[a] for a in range(6, 13)]
        outcomes = []
        for transport in ("rtu", "tcp"):
            link = (ModbusLink.rtu(info["rtu_path"], line, timeout_s=0.2) if transport == "rtu"
                    else ModbusLink.tcp("127.0.0.1", info["tcp_port"], timeout_s=0.2))
            async with link:
                for _ in range(12):
                    try:
                        outcomes.append(await link.read_registers(4, 6, 7, 0xC0) == want)
                    except (FrameError, DeviceTimeout) as exc:
                        outcomes.append(type(exc).__name__)
        assert False not in outcomes  # either the right registers or an error, never other numbers
        assert "FrameError" in outcomes
        slave.set_fault(None)
        async with ModbusLink.tcp("127.0.0.1", info["tcp_port"], timeout_s=0.2) as link:
            assert await link.read_registers(4, 6, 7, 0xC0) == want


async def test_rtu_bus_counts_frames_sent_inside_t35() -> None:
    s1, _ = make_model("renke_wind_speed", 1, start=FROZEN)
    buses: list[Any] = []
    async with serving([s1], rtu=True, baudrate=4800, turnaround_s=0.0, strict_gaps=True, buses=buses) as info:
        wire: RtuBus = buses[0]
        async with ModbusLink.rtu(info["rtu_path"], LineDefaults(4800, "N", 1, 8), timeout_s=0.2) as link:
            await link.read_registers(3, 0, 1, 1)
            with pytest.raises(DeviceTimeout):  # sent right after the reply: it runs into it, nobody answers
                await link.read_registers(3, 0, 1, 1)
            assert wire.gap_violations == 1
            await asyncio.sleep(wire.t35 * 2)
            assert len(await link.read_registers(3, 0, 1, 1)) == 1
        assert (wire.gap_violations, wire.frames) == (1, 2)


def test_air_physics_is_plausible_and_repeatable() -> None:
    a, b = AirModel(seed=5, start=FROZEN), AirModel(seed=5, start=FROZEN)
    for t in range(0, 3 * 86400, 600):
        sa, sb = a.advance(FROZEN + t), b.advance(FROZEN + t)
        assert sa == sb
        assert sa.pm10 >= sa.pm25 > 0 and sa.no2 > 0 and sa.co > 0 and sa.o3 > 0 and 40 < sa.noise_db < 80
    other = AirModel(seed=6, start=FROZEN).advance(FROZEN + 86400)
    assert other != AirModel(seed=5, start=FROZEN).advance(FROZEN + 86400)
    assert traffic_level(8.0) > 0.9 and traffic_level(3.0) < 0.2
    # rush hour brings NO2 and noise up; rain washes particles out
    m = AirModel(seed=1, start=FROZEN)
    night, rush = m.advance(FROZEN + 14 * 3600), m.advance(FROZEN + 19 * 3600)  # 03:00 and 08:00 local
    assert rush.no2 > 1.5 * night.no2 and rush.noise_db > night.noise_db + 10
    w = WeatherModel(2, start=FROZEN)
    storm = w.storms[0]
    dry, wet = AirModel(seed=2, start=FROZEN), AirModel(seed=2, start=FROZEN)
    t = storm.peak
    dry_state = dry.advance(t, WeatherModel(2, start=FROZEN, storms_per_day=0).advance(t))
    wet_state = wet.advance(t, w.advance(t))
    assert wet_state.pm25 < dry_state.pm25


def test_model_table_and_bad_slave_specs() -> None:
    assert set(MODELS) == {"vaisala_wxt530", "lufft_ws", "renke_wind_speed", "renke_wind_direction",
                           "small_weather_station", "dfrobot_sen0575", "pm_transmitter", "outdoor_six_gas",
                           "vega_vegapuls_c21", "hilink_ld8001h", "keller_series30", "gas_module_ch4",
                           "witmotion_wt901c485"}
    assert parse_slaves(["dfrobot_sen0575", "pm_transmitter:3"]) == [("dfrobot_sen0575", 192), ("pm_transmitter", 3)]
    for bad, words in ((["nope:1"], "unknown model 'nope'"), (["pm_transmitter:0"], "unit must be 1..255"),
                       (["pm_transmitter:1", "renke_wind_speed:1"], "share a unit id")):
        with pytest.raises(ValueError, match=words):
            parse_slaves(bad)
    with pytest.raises(ValueError, match="unknown model"):
        make_model("acme")
    # seeded: the same seed and clock give the same registers
    regs = [make_model("outdoor_six_gas", seed=3, start=FROZEN, clock=lambda: 0.0)[1].holding for _ in range(2)]
    assert regs[0] == regs[1]


@needs_mbpoll
async def test_quanedge_sim_modbus_serves_a_mixed_bus() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "quanedge")
    proc = await asyncio.create_subprocess_exec(
        exe, "sim", "modbus", "--slave", "renke_wind_speed:1", "--slave", "renke_wind_direction:2", "--rtu",
        "--tcp", "0", "--control", "0", "--seed", "7", stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert info["line"] == "4800 8N1" and info["slaves"] == ["renke_wind_speed:1", "renke_wind_direction:2"]
        line = LineDefaults(4800, "N", 1, 8)
        code, values, err = await mbpoll(*target(info, False, 2, line)[:-1], "-r", "1", "-c", "2", info["rtu_path"])
        assert code == 0 and 0 <= values[1] <= 7 and 0 <= values[2] < 360, err
        code, values, err = await mbpoll(*target(info, True, 1, line)[:-1], "-r", "1", "127.0.0.1")
        assert code == 0 and 0 <= values[1] < 700, err
        await set_fault(info["control_port"], 2, "exception", code=6)  # faults from another process
        code, _, err = await mbpoll(*target(info, False, 2, line)[:-1], "-r", "1", info["rtu_path"])
        assert code != 0 and "busy" in err.lower(), err
        await set_fault(info["control_port"], 2, None)
        code, _, err = await mbpoll(*target(info, False, 2, line)[:-1], "-r", "1", info["rtu_path"])
        assert code == 0, err
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()
