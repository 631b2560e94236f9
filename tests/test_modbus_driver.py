"""drivers.modbus.driver against the hand-written simulator: RTU on a pty and Modbus TCP, with faults."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from core.errors import CommandRefused, ConfigError, DeviceException, DeviceTimeout, DriverError, FrameError, LinkError
from core.reading import Quality
from drivers.base import Driver
from drivers.modbus.driver import ModbusDevice, ModbusLink
from drivers.modbus.profile import PointSpec, Profile, load_profile
from drivers.modbus.sim_slave import SimSlave, crc16, serving, set_fault
from drivers.modbus.sim_wxt530 import Wxt530Registers, make_wxt530, precipitation_code, serve_wxt530

PROFILE = load_profile("vaisala_wxt530")
TIMEOUT = 0.2


@dataclass
class Rig:
    info: dict[str, Any]
    slaves: dict[int, SimSlave]
    wxt: dict[int, Wxt530Registers]

    def link(self, transport: str, **kw: Any) -> ModbusLink:
        if transport == "rtu":
            return ModbusLink.rtu(self.info["rtu_path"], PROFILE.line, timeout_s=TIMEOUT, **kw)
        return ModbusLink.tcp("127.0.0.1", self.info["tcp_port"], timeout_s=TIMEOUT, **kw)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    s1, w1 = make_wxt530(1, seed=1)
    s2, w2 = make_wxt530(2, seed=2, missing={"global_radiation"})
    plain = SimSlave(7, holding={a: 0 for a in range(100, 110)}, input={0: 1})
    async with serving([s1, s2, plain], tcp_port=0, rtu=True, control_port=0) as info:
        yield Rig(info, {1: s1, 2: s2, 7: plain}, {1: w1, 2: w2})


def assert_matches_physics(readings: list, wxt: Wxt530Registers) -> None:
    assert [r.point for r in readings] == [p.name for p in PROFILE.points]
    for r in readings:
        expected = wxt.values[r.point]
        if expected is None:
            assert (r.value, r.quality) == (None, Quality.MISSING), r.point
        else:
            assert r.quality == Quality.GOOD, r.point
            assert r.value == pytest.approx(expected, abs=PROFILE.point(r.point).scale / 2 + 1e-9), r.point


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
async def test_read_decodes_the_physics_within_scale(rig: Rig, transport: str) -> None:
    async with rig.link(transport) as link:
        dev = ModbusDevice("wxt-1", link, 1, PROFILE)
        assert isinstance(dev, Driver)
        before = time.time()
        readings = await dev.read()
    assert_matches_physics(readings, rig.wxt[1])
    assert all(r.device == "wxt-1" and before <= r.ts <= time.time() for r in readings)
    assert [(r.point, r.value) for r in readings[:2]] == [("model_number", 6), ("software_version", 3)]  # 0x0603
    assert list(rig.slaves[1].log) == [(4, 0x0000, 1), (4, 0x000A, 26)]  # coalesced, gap 0x01-0x09 unread


def test_simulator_registers_match_devices_md_raw_numbers() -> None:
    # Independent of the profile: devices.md says S16 x10 (two's complement), U16, 32767/65535 invalid.
    _, wxt = make_wxt530(1, seed=5, start=1_750_050_000.0)  # 13:00 local (UTC+8): sun is up
    wxt.refresh()
    st, regs = wxt.state, wxt.input

    def s16(v: float) -> int:
        return round(v * 10) & 0xFFFF

    assert regs[0x0000] == 0x0603  # WXT536, software version 3
    assert regs[0x000A] == s16(st.humidity_pct)
    assert regs[0x000E] == s16(st.pressure_hpa)
    assert regs[0x0012] == s16(st.wind_dir_deg) and regs[0x0016] == s16(st.wind_dir_deg)
    assert regs[0x0019] == precipitation_code(st.rain_rate_mmh)
    assert regs[0x001A] == 100
    assert regs[0x001B] == s16(st.radiation_wm2) and st.radiation_wm2 > 100
    assert regs[0x001F] == s16(st.temperature_c)
    assert regs[0x0023] == s16(st.dew_point_c)
    low, high = wxt.values["air_temperature_min"], wxt.values["air_temperature_max"]
    assert low is not None and high is not None and low <= st.temperature_c <= high
    assert all(regs[a] == 32767 for a in (0x0017, 0x0018, 0x0024, 0x0025))
    assert not any(a in regs for a in range(0x0001, 0x000A))
    _, cold = make_wxt530(1, missing={"air_temperature", "wind_quality"})
    assert cold.input[0x001F] == cold.input[0x0022] == 32767 and cold.input[0x001A] == 65535


def test_simulated_weather_follows_the_clock_and_keeps_a_window() -> None:
    now = [1_000.0]
    wxt = Wxt530Registers(seed=2, start=1_750_050_000.0, time_factor=10.0, window_s=60.0, sample_s=1.0,
                          clock=lambda: now[0])
    now[0] += 30.0  # 30 s of wall clock = 300 s of weather
    wxt.refresh()
    assert wxt.state.t == pytest.approx(1_750_050_300.0)
    window = list(wxt._window)
    assert len(window) == 61 and window[-1].t - window[0].t == pytest.approx(60.0)
    v = wxt.values
    for name in ("air_temperature", "relative_humidity", "air_pressure", "global_radiation"):
        lo, inst, hi, avg = v[name + "_min"], v[name], v[name + "_max"], v[name + "_avg"]
        assert lo is not None and inst is not None and hi is not None and avg is not None
        assert lo <= inst <= hi and lo <= avg <= hi, name
    assert v["air_temperature"] == wxt.state.temperature_c
    with pytest.raises(ValueError, match="names no WXT530 point"):
        Wxt530Registers(missing={"rain"})


async def rtu_exchange(path: str, request: bytes, expect: int = 0, wait_s: float = 0.25) -> bytes:
    """Raw bytes on the pty, no Modbus library involved; stops early once `expect` bytes came."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        os.write(fd, request)
        reply = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not (expect and len(reply) >= expect):
            await asyncio.sleep(0.01)
            with contextlib.suppress(BlockingIOError):
                reply += os.read(fd, 512)
        return reply
    finally:
        os.close(fd)


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


async def test_rtu_wire_bytes_and_exception_responses(rig: Rig) -> None:
    path = rig.info["rtu_path"]
    for frame in ("0104000A001CD1C1", "010300000001840A", "C00400080002E0D8"):  # devices.md examples
        raw = bytes.fromhex(frame)
        assert with_crc(raw[:-2]) == raw
    reply = await rtu_exchange(path, bytes.fromhex("0104000A001CD1C1"), 61)  # the manual's example query
    assert reply[:3] == bytes([1, 4, 56]) and len(reply) == 3 + 56 + 2 and with_crc(reply[:-2]) == reply
    assert int.from_bytes(reply[3 + 2 * (0x1F - 0x0A):5 + 2 * (0x1F - 0x0A)], "big") == rig.slaves[1].input[0x1F]
    assert await rtu_exchange(path, with_crc(bytes.fromhex("0101000000 08")), 5) == with_crc(bytes([1, 0x81, 1]))
    assert await rtu_exchange(path, with_crc(bytes.fromhex("0104000100 01")), 5) == with_crc(bytes([1, 0x84, 2]))
    assert await rtu_exchange(path, with_crc(bytes.fromhex("0104000A00 00")), 5) == with_crc(bytes([1, 0x84, 3]))
    assert await rtu_exchange(path, with_crc(bytes.fromhex("0704000000 01")), 7) == with_crc(bytes([7, 4, 2, 0, 1]))
    assert await rtu_exchange(path, bytes.fromhex("0104000A001CD1C2")) == b""  # bad CRC: a slave stays silent
    assert await rtu_exchange(path, with_crc(bytes.fromhex("0904000A00 01"))) == b""  # absent unit: silent


async def test_two_slaves_share_one_rtu_bus(rig: Rig) -> None:
    async with rig.link("rtu") as link:
        one, two = ModbusDevice("wxt-1", link, 1, PROFILE), ModbusDevice("wxt-2", link, 2, PROFILE)
        r1, r2 = await one.read(), await two.read()
        assert_matches_physics(r1, rig.wxt[1])
        assert_matches_physics(r2, rig.wxt[2])  # unit 2 has no radiation sensor: 4 points missing
        assert sum(r.quality == Quality.MISSING for r in r2) == 4
        with pytest.raises(DeviceTimeout):
            await ModbusDevice("ghost", link, 9, PROFILE).read()  # absent unit: silence
        assert_matches_physics(await one.read(), rig.wxt[1])
    assert rig.slaves[1].requests == 4 and rig.slaves[2].requests == 2


async def test_winter_station_decodes_negative_values() -> None:
    slave, wxt = make_wxt530(4, seed=9, weather={"mean_temp_c": -25.0})
    async with (serving([slave], tcp_port=0) as info,
                ModbusLink.tcp("127.0.0.1", info["tcp_port"], timeout_s=TIMEOUT) as link):
        readings = await ModbusDevice("cold", link, 4, PROFILE).read()
    assert_matches_physics(readings, wxt)
    assert next(r for r in readings if r.point == "air_temperature").value < -10  # type: ignore[operator]


async def test_tcp_serves_several_connections_at_once(rig: Rig) -> None:
    rig.slaves[2].set_fault("delay", delay_s=0.15)  # slow, but within the timeout
    async with rig.link("tcp") as a, rig.link("tcp") as b:

        async def timed(link: ModbusLink, unit: int) -> float:
            t0 = time.monotonic()
            await link.read_registers(4, 0x000A, 26, unit)
            return time.monotonic() - t0

        slow, fast = await asyncio.gather(timed(a, 2), timed(b, 1))
    assert slow >= 0.15 and fast < 0.1


async def test_rtu_read_takes_real_wire_time(rig: Rig) -> None:
    async with rig.link("rtu") as link:
        t0 = time.monotonic()
        await link.read_registers(4, 0x000A, 26, 1)
        elapsed = time.monotonic() - t0
    wire = (8 + 57) * 10 / 19200  # request + reply bytes, 10 bits per character at 8N1
    assert wire <= elapsed < TIMEOUT


FAULTS = [
    # (transport, fault, params, expected error)
    ("rtu", "silent", {}, DeviceTimeout), ("tcp", "silent", {}, DeviceTimeout),
    ("rtu", "delay", {"delay_s": 0.35}, DeviceTimeout), ("tcp", "delay", {"delay_s": 0.35}, DeviceTimeout),
    ("rtu", "exception", {"code": 6}, DeviceException), ("tcp", "exception", {"code": 6}, DeviceException),
    ("rtu", "garbage", {}, FrameError), ("tcp", "garbage", {}, FrameError),
    ("rtu", "crc_error", {}, FrameError), ("tcp", "crc_error", {}, FrameError),
    ("rtu", "wrong_unit", {}, FrameError), ("tcp", "wrong_unit", {"as_unit": 9}, FrameError),
    ("rtu", "disconnect", {}, DeviceTimeout), ("tcp", "disconnect", {}, LinkError),
]


@pytest.mark.parametrize("transport, fault, params, error", FAULTS, ids=[f"{f[0]}-{f[1]}" for f in FAULTS])
async def test_fault_maps_to_driver_error_and_clears(
    rig: Rig, transport: str, fault: str, params: dict[str, Any], error: type[DriverError]
) -> None:
    async with rig.link(transport) as link:
        dev = ModbusDevice("wxt-1", link, 1, PROFILE)
        await dev.read()
        await set_fault(rig.info["control_port"], 1, fault, **params)  # the cross-process path
        t0 = time.monotonic()
        with pytest.raises(error) as err:
            await dev.read(["air_temperature"])
        assert time.monotonic() - t0 < TIMEOUT + 0.3
        assert type(err.value) is error
        if isinstance(err.value, DeviceException):
            assert err.value.code == 6 and "busy" in str(err.value)
        if fault == "wrong_unit":
            assert "unit 2" in str(err.value) or "unit 9" in str(err.value)
        await set_fault(rig.info["control_port"], 1, None)
        assert_matches_physics(await dev.read(), rig.wxt[1])  # reconnects / resyncs by itself


async def test_late_rtu_reply_is_not_taken_for_the_next_answer(rig: Rig) -> None:
    rig.slaves[1].set_fault("delay", delay_s=0.3)
    async with rig.link("rtu") as link:
        with pytest.raises(DeviceTimeout):
            await link.read_registers(4, 0x001F, 1, 1)  # its reply comes 0.1 s after the timeout
        rig.slaves[1].set_fault(None)
        assert await link.read_registers(4, 0x0000, 1, 1) == [0x0603]


async def test_without_recovery_a_late_rtu_reply_would_be_mistaken(rig: Rig) -> None:
    # Shows why the recovery wait exists: RTU replies carry no transaction id.
    rig.slaves[1].set_fault("delay", delay_s=0.3)
    async with rig.link("rtu", recovery_s=0) as link:
        with pytest.raises(DeviceTimeout):
            await link.read_registers(4, 0x001F, 1, 1)
        rig.slaves[1].set_fault(None)
        assert await link.read_registers(4, 0x0000, 1, 1) == [rig.slaves[1].input[0x001F]]


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
async def test_exception_responses_from_the_device(rig: Rig, transport: str) -> None:
    async with rig.link(transport) as link:
        with pytest.raises(DeviceException) as err:
            await link.read_registers(4, 0x0001, 1, 1)  # not in the WXT530 map
        assert err.value.code == 2 and "illegal data address" in str(err.value)
        with pytest.raises(DeviceException) as err:
            await link.write_registers(0x0000, [1], 1)  # the WXT530 sim has no holding registers
        assert err.value.code == 2


@pytest.mark.parametrize("transport", ["rtu", "tcp"])
async def test_writes_reach_the_device(rig: Rig, transport: str) -> None:
    plain = rig.slaves[7]
    spec = Profile("plain", "Acme", "X", points=(PointSpec("level", 3, 100, "u16"),))
    async with rig.link(transport) as link:
        dev = ModbusDevice("plain", link, 7, spec)
        await dev.write("write_registers", {"address": 101, "values": [11, 22, 65535]})
        assert [plain.holding[a] for a in (101, 102, 103)] == [11, 22, 65535]
        plain.holding[100] = 42
        assert (await dev.read())[0].value == 42
        assert plain.log[-2] == (16, 101, 3)
        refusals: list[tuple[str, dict[str, Any], str]] = [
            ("reboot", {}, "unknown command 'reboot'"),
            ("write_registers", {"address": 101}, "exactly {address, values}"),
            ("write_registers", {"address": 101, "values": [70000]}, "0..65535"),
            ("write_registers", {"address": 65535, "values": [1, 2]}, "address + number of values"),
            ("write_registers", {"address": "0x10", "values": [1]}, "address must be an integer"),
        ]
        for command, args, words in refusals:
            with pytest.raises(CommandRefused, match=words.replace("{", r"\{").replace("+", r"\+")):
                await dev.write(command, args)
    assert plain.holding[101] == 11


async def test_partial_failure_marks_points_and_total_failure_raises(rig: Rig) -> None:
    points = (PointSpec("temp", 4, 0x001F, "s16", scale=0.1), PointSpec("ghost", 4, 0x0050))
    prof = Profile("partial", "Acme", "X", points=points)
    async with rig.link("tcp") as link:
        temp, ghost = await ModbusDevice("p", link, 1, prof).read()
        assert (temp.quality == Quality.GOOD
                and temp.value == pytest.approx(rig.wxt[1].values["air_temperature"], abs=0.05))
        assert (ghost.value, ghost.quality) == (None, Quality.COMM_FAILURE)
        assert "illegal data address" in (ghost.text or "")
        with pytest.raises(DeviceException):
            await ModbusDevice("p", link, 1, prof).read(["ghost"])


async def test_point_selection(rig: Rig) -> None:
    async with rig.link("tcp") as link:
        dev = ModbusDevice("wxt-1", link, 1, PROFILE)
        got = await dev.read(["dew_point", "air_temperature"])
        assert [r.point for r in got] == ["air_temperature", "dew_point"]
        assert rig.slaves[1].log[-1] == (4, 0x001F, 5)
        with pytest.raises(ConfigError, match="unknown point.*'air_temp'"):
            await dev.read(["air_temp"])


async def test_link_errors(rig: Rig, tmp_path: Any) -> None:
    with pytest.raises(LinkError, match="no such serial port"):
        await ModbusLink.rtu(str(tmp_path / "ttyUSB9")).open()
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    free_port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(LinkError, match="cannot open modbus tcp"):
        await ModbusLink.tcp("127.0.0.1", free_port).open()
    link = rig.link("tcp")
    assert not link.is_open
    assert await link.read_registers(4, 0, 1, 1) == [0x0603]  # opens itself on first use
    dev = ModbusDevice("wxt", link, 1, PROFILE, owns_link=True)
    await dev.close()
    assert not link.is_open
    with pytest.raises(LinkError, match="is closed"):
        await dev.read()
    await dev.open()
    assert link.is_open and len(await dev.read()) == len(PROFILE.points)
    await link.close()
    lazy = ModbusLink.rtu(str(tmp_path / "ttyUSB8"))
    with pytest.raises(LinkError, match="no such serial port"):
        await lazy.read_registers(4, 0, 1, 1)


async def test_rtu_link_reports_a_vanished_port(rig: Rig) -> None:
    s, _ = make_wxt530(3)
    async with serving([s], rtu=True) as info:
        link = ModbusLink.rtu(info["rtu_path"], PROFILE.line, timeout_s=TIMEOUT)
        await link.open()
        assert await link.read_registers(4, 0, 1, 3) == [0x0603]
    await asyncio.sleep(0.05)  # the bus (the USB adapter, say) is gone
    # LinkError ("no such serial port"); DeviceTimeout only if another process got the same pts number
    with pytest.raises((LinkError, DeviceTimeout)):
        await link.read_registers(4, 0, 1, 3)
    await link.close()


@pytest.mark.parametrize("kwargs, words", [
    ({}, "exactly one of"), ({"serial_port": "/dev/x", "host": "h"}, "exactly one of"),
    ({"host": "h", "timeout_s": 0}, "timeout_s"), ({"host": "h", "port": 0}, "port"),
])
def test_link_rejects_bad_arguments(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ModbusLink(**kwargs)


def test_rtu_line_settings_override_the_profile() -> None:
    link = ModbusLink.rtu("/dev/ttyUSB0", PROFILE.line, baudrate=9600, parity="E")
    assert str(link) == "modbus rtu /dev/ttyUSB0 9600 8E1"
    assert str(ModbusLink.rtu("/dev/ttyUSB0")) == "modbus rtu /dev/ttyUSB0 19200 8E1"  # the Modbus default
    with pytest.raises(ValueError, match="parity"):
        ModbusLink.rtu("/dev/ttyUSB0", parity="X")


async def test_request_validation(rig: Rig) -> None:
    link = rig.link("tcp")
    for args, words in [((5, 0, 1, 1), "function"), ((4, 0, 126, 1), "count"), ((4, 65535, 2, 1), "address \\+ count"),
                        ((4, 0, 1, 0), "unit")]:
        with pytest.raises(ValueError, match=words):
            await link.read_registers(*args)
    with pytest.raises(ValueError, match="unit"):
        ModbusDevice("d", link, 256, PROFILE)


async def test_serve_wxt530_until_cancelled() -> None:
    ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_wxt530(tcp_port=0, rtu=True, units=(1, 2), seed=7, control_port=0,
                                            on_ready=ready.set_result, time_factor=60.0))
    info = await asyncio.wait_for(ready, 5)
    assert set(info) == {"tcp_port", "rtu_path", "control_port"} and info["tcp_port"] > 0
    async with ModbusLink.tcp("127.0.0.1", info["tcp_port"], timeout_s=TIMEOUT) as tcp, \
            ModbusLink.rtu(info["rtu_path"], PROFILE.line, timeout_s=TIMEOUT) as rtu:
        for link in (tcp, rtu):
            for unit in (1, 2):
                readings = await ModbusDevice(f"wxt-{unit}", link, unit, PROFILE).read()
                assert all(r.quality == Quality.GOOD for r in readings)
        await set_fault(info["control_port"], 2, "silent")
        with pytest.raises(DeviceTimeout):
            await ModbusDevice("wxt-2", tcp, 2, PROFILE).read()
        with pytest.raises(RuntimeError, match="unknown fault 'fire'"):
            await set_fault(info["control_port"], 1, "fire")
        with pytest.raises(RuntimeError, match="no slave with unit 3"):
            await set_fault(info["control_port"], 3, None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", info["tcp_port"])
    with pytest.raises(ValueError, match="tcp_port and/or rtu"):
        await serve_wxt530()
