"""GB/T 20999-2017: devices.md frames byte for byte, codec properties, driver against the TCP simulator."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CommandRefused, DeviceException, DeviceTimeout, FrameError, LinkError
from core.reading import Quality, Reading, RecordClass
from drivers.base import Driver
from drivers.gbt20999 import codec as g
from drivers.gbt20999.driver import GbtDriver, point_item
from drivers.gbt20999.settings import GbtSettings
from drivers.gbt20999.sim import Fault, GbtControllerSim, Plan

QUERY_PLAN = bytes.fromhex("7E 00 13 01 02 01 00 00 00 01 01 01 10 01 01 04 0D 02 03 00 9A D9 7D")
SET_PLAN_3 = bytes.fromhex("7E 00 14 01 02 01 00 00 00 01 01 02 30 01 01 05 11 03 00 00 03 72 2B 7D")


# --- devices.md, byte for byte -------------------------------------------------------------------
def test_query_current_plan_frame_byte_for_byte() -> None:
    frame = g.Frame(g.FrameType.QUERY, 1, (g.DataItem(1, *g.CURRENT_PLAN),), centre=1, controller=1, road=1)
    assert g.encode_frame(frame) == QUERY_PLAN
    assert g.decode_frame(QUERY_PLAN) == frame
    assert g.crc16(QUERY_PLAN[1:-3]) == 0x9AD9


def test_set_plan_3_frame_byte_for_byte() -> None:
    frame = g.Frame(g.FrameType.SET, 2, (g.item_with_value(1, g.ASSIGN_PLAN, 0, 3),))
    assert g.encode_frame(frame) == SET_PLAN_3
    decoded = g.decode_frame(SET_PLAN_3)
    assert decoded == frame and decoded.items[0].value() == 3
    assert g.crc16(SET_PLAN_3[1:-3]) == 0x722B


def test_escaping_matches_the_reference_implementation() -> None:
    # RVDataFusionServer's own test vector: 0x5C goes before each 7E/7D/5C.
    plain = bytes.fromhex("7e 12 34 56 5c 24 7d")
    assert g.escape(plain) == bytes.fromhex("5c 7e 12 34 56 5c 5c 24 5c 7d")
    assert g.unescape(g.escape(plain)) == plain


def test_special_bytes_in_body_and_crc_are_escaped_and_crc_skips_escapes() -> None:
    frame = g.Frame(g.FrameType.QUERY_REPLY, 0x7D, (g.item_with_value(1, g.CURRENT_STAGE, 0, 0x5C),),
                    controller=0x7E7D5C01)
    raw = g.encode_frame(frame)
    inner = raw[1:-1]
    assert 0x7E not in inner.replace(b"\x5c\x7e", b"") and 0x7D not in inner.replace(b"\x5c\x7d", b"")
    assert g.decode_frame(raw) == frame
    assert g.decode_frame(g.encode_frame(frame, escaped=False), escaped=False) == frame  # UDP: no escapes


def test_length_counting_escapes_is_accepted_for_interop() -> None:
    frame = g.Frame(g.FrameType.QUERY, 1, (g.DataItem(1, *g.CURRENT_PLAN),), controller=0x7E)
    body = g._body(frame)
    wire_len = len(g.escape(body + g.crc16(body).to_bytes(2, "big"))) - 2
    quirky = wire_len.to_bytes(2, "big") + body[2:]
    crc = g.crc16(quirky).to_bytes(2, "big")
    assert g.decode_frame(b"\x7e" + g.escape(quirky + crc) + b"\x7d").controller == 0x7E


@pytest.mark.parametrize("raw, fragment", [
    (QUERY_PLAN[:-3] + bytes([0x9A, 0xD8]) + b"\x7d", "CRC mismatch"),
    (b"\x7e\x00\x7d", "too short"),
    (QUERY_PLAN[:-1], "start with 7E and end with 7D"),
    (QUERY_PLAN[:5] + b"\x5c\x01" + QUERY_PLAN[7:], "escape byte"),
])
def test_bad_frames_name_the_fault(raw: bytes, fragment: str) -> None:
    with pytest.raises(FrameError, match=fragment):
        g.decode_frame(raw)


def _reframe(body: bytes) -> bytes:
    body = len(body).to_bytes(2, "big") + body[2:]
    return b"\x7e" + g.escape(body + g.crc16(body).to_bytes(2, "big")) + b"\x7d"


def test_structural_errors_with_valid_crc() -> None:
    body = bytearray(g._body(g.Frame(g.FrameType.QUERY, 1, (g.DataItem(1, *g.CURRENT_PLAN),))))
    bad_type = bytearray(body)
    bad_type[11] = 0x99
    with pytest.raises(FrameError, match="unknown frame type 0x99"):
        g.decode_frame(_reframe(bytes(bad_type)))
    short_item = bytearray(body)
    short_item[14] = 2
    with pytest.raises(FrameError, match="shorter than"):
        g.decode_frame(_reframe(bytes(short_item)))
    two_items = bytearray(body)
    two_items[12] = 2
    with pytest.raises(FrameError, match="item 2 of 2 is missing"):
        g.decode_frame(_reframe(bytes(two_items)))
    with pytest.raises(FrameError, match="stray bytes"):
        g.decode_frame(_reframe(bytes(body) + b"\x00"))
    wrong_size = g.DataItem(1, *g.PLAN_CYCLE, 1, b"\x01")
    with pytest.raises(FrameError, match="expected 2"):
        wrong_size.value()


# --- properties ----------------------------------------------------------------------------------
_byte = st.integers(0, 255)
_items = st.lists(st.builds(g.DataItem, _byte, _byte, _byte, _byte, _byte, st.binary(max_size=12)), max_size=6)
_frames = st.builds(
    lambda t, seq, items, c, ctl, r: g.Frame(t, seq, tuple(items), centre=c, controller=ctl, road=r),
    st.sampled_from(list(g.FrameType)), _byte, _items, _byte, st.integers(0, 0xFFFFFFFF), _byte,
)


@settings(max_examples=300, deadline=None)
@given(_frames, st.booleans())
def test_frame_round_trip(frame: g.Frame, escaped: bool) -> None:
    assert g.decode_frame(g.encode_frame(frame, escaped=escaped), escaped=escaped) == frame


@settings(max_examples=150, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=5), st.binary(max_size=10).filter(lambda b: 0x7E not in b),
       st.integers(1, 17))
def test_splitter_recovers_frames_from_a_chunked_noisy_stream(frames, noise, chunk) -> None:
    stream = noise + b"".join(g.encode_frame(f) for f in frames)
    splitter = g.FrameSplitter()
    got = []
    for i in range(0, len(stream), chunk):
        got += splitter.feed(stream[i:i + chunk])
    assert [x for x in got if isinstance(x, g.Frame)] == frames
    assert all(isinstance(x, (g.Frame, FrameError)) for x in got)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_only_frame_error(data: bytes) -> None:
    for raw in (data, b"\x7e" + data + b"\x7d"):
        for escaped in (True, False):
            with contextlib.suppress(FrameError):
                g.decode_frame(raw, escaped=escaped)
    assert all(isinstance(x, (g.Frame, FrameError)) for x in g.FrameSplitter().feed(data + b"\x7d"))


# --- driver against the simulator ----------------------------------------------------------------
def _settings(sim: GbtControllerSim, **kw) -> GbtSettings:
    base = dict(name="tsc1", host="127.0.0.1", port=sim.port, timeout_s=0.5, detectors=(1, 3), plans=(1, 3),
                allowed_plans=frozenset({1, 2, 3, 9}), allowed_stages=frozenset({2}))
    return GbtSettings(**(base | kw))


async def test_wire_bytes_equal_devices_md_and_plan_change_takes_effect() -> None:
    async with GbtControllerSim() as sim:
        drv = GbtDriver(_settings(sim))
        await drv.open()
        try:
            (plan,) = await drv.read(["current_plan"])
            assert plan.value == 1.0
            await drv.write("set_plan", {"plan": 3})
            assert bytes(sim.bytes_in) == QUERY_PLAN + SET_PLAN_3  # seq 1 then seq 2, as in devices.md
            assert sim.plan == 3
            (plan,) = await drv.read(["current_plan"])
            assert plan.value == 3.0
        finally:
            await drv.close()


async def test_read_all_points_matches_the_controller() -> None:
    t = 1_750_000_123.0
    async with GbtControllerSim(clock=lambda: t) as sim:
        drv = GbtDriver(_settings(sim), clock=lambda: t)
        await drv.open()
        try:
            r = {x.point: x for x in await drv.read()}
        finally:
            await drv.close()
    assert r["run_mode"].value == 0x21 and r["run_mode"].text == "local_fixed_cycle"
    assert r["current_stage"].value == sim.stage_at(t)
    for det in (1, 3):
        flow, occ, speed = sim.detector_values(det, t)
        assert ((r[f"det{det}_flow"].value, r[f"det{det}_occupancy"].value, r[f"det{det}_speed"].value)
                == (flow, occ, speed))
        assert r[f"det{det}_speed"].unit == "km/h"
    assert (r["plan3_cycle"].value, r["plan3_offset"].value) == (120.0, 36.0)
    assert all(x.quality is Quality.GOOD for x in r.values())


async def test_stages_cycle_in_real_time_and_are_reported() -> None:
    fast = (Plan(1, 0, 1, ((1, 0.15), (2, 0.15), (3, 0.2))),)
    reports: list[Reading] = []
    async with GbtControllerSim(plans=fast, heartbeat_s=0.1) as sim:
        drv = GbtDriver(_settings(sim, plans=(), detectors=()), on_report=reports.append)
        await drv.open()
        try:
            seen = set()
            for _ in range(12):
                (stage,) = await drv.read(["current_stage"])
                seen.add(stage.value)
                await asyncio.sleep(0.05)
            assert seen == {1.0, 2.0, 3.0}
        finally:
            await drv.close()
        assert sim.heartbeat_replies >= 2  # the controller's heartbeats were answered
    assert len(reports) >= 3
    assert all(r.point == "current_stage" and r.cls is RecordClass.EVENT for r in reports)
    assert {r.value for r in reports} <= {1.0, 2.0, 3.0}


async def test_guards_device_refusals_and_errors() -> None:
    async with GbtControllerSim() as sim:
        drv = GbtDriver(_settings(sim, heartbeat_s=0.05))
        await drv.open()
        try:
            sent = len(sim.bytes_in)
            for cmd, args in (("set_plan", {"plan": 4}), ("set_stage", {"stage": 1}), ("set_mode", {"mode": 0x31}),
                              ("set_plan", {"plan": "3"}), ("reboot", {})):
                with pytest.raises(CommandRefused):
                    await drv.write(cmd, args)
            await asyncio.sleep(0.12)
            assert drv.last_heartbeat is not None  # our heartbeats were answered
            assert all(f.ftype is g.FrameType.HEARTBEAT for f in sim.frames_in)
            assert len(sim.bytes_in) > sent
            with pytest.raises(DeviceException) as err:
                await drv.write("set_plan", {"plan": 9})  # allowed here, unknown to the controller
            assert err.value.code == 0x10
            with pytest.raises(DeviceException, match="no such object"):
                await drv.read(["det9_flow"])
            await drv.write("set_stage", {"stage": 2})
            (mode, stage) = await drv.read(["run_mode", "current_stage"])
            assert (mode.text, stage.value) == ("centre_manual", 2.0)
            with pytest.raises(CommandRefused):
                await drv.read(["bogus_point"])
            sim.fault = Fault.SILENCE
            with pytest.raises(DeviceTimeout):
                await drv.read(["current_plan"])
            sim.fault = Fault.BAD_CRC
            with pytest.raises(FrameError, match="CRC mismatch|escape"):
                await drv.read(["current_plan"])
            sim.fault = Fault.NONE
            sim.drop_connections()
            await asyncio.sleep(0.05)
            with pytest.raises(LinkError):
                await drv.read(["current_plan"])
        finally:
            await drv.close()
    with pytest.raises(LinkError):
        await GbtDriver(GbtSettings(name="x", host="127.0.0.1", port=sim.port, timeout_s=0.5)).open()


def test_point_names_and_settings_validation() -> None:
    assert point_item("det7_occupancy") == (g.DETECTOR_OCCUPANCY, 7, "%")
    assert point_item("plan3_offset") == (g.PLAN_OFFSET, 3, "s")
    for bad in ("det0_flow", "plan3_flow", "stage"):
        with pytest.raises(ValueError):
            point_item(bad)
    for kw in ({"port": 0}, {"allowed_plans": frozenset({0})}, {"allowed_modes": frozenset({0x99})},
               {"timeout_s": 0}, {"controller_id": -1}):
        with pytest.raises(ValueError):
            GbtSettings(**({"name": "tsc1", "host": "h", "port": 1} | kw))


def test_driver_satisfies_the_protocol() -> None:
    assert isinstance(GbtDriver(GbtSettings(name="tsc1", host="10.0.0.9", port=5000)), Driver)


# --- one settings class: the config file and code meet the same rules -----------------------------
_CONFIG = """
[box]
id = "box"
data_dir = "var"

[uplink]
kind = "mqtt"
[uplink.mqtt]
host = "127.0.0.1"

[[device]]
name = "tsc1"
kind = "gbt20999"
host = "10.0.0.9"
port = 5000
"""


@pytest.mark.parametrize("line, kw, key", [
    # the old parser refused these and the driver's old settings class took them; now GbtSettings refuses them
    # (points: checked there alone, the parser no longer has its own copy)
    ('points = ["det0_flow"]', {"points": ("det0_flow",)}, "points"),
    ("heartbeat_s = 5000", {"heartbeat_s": 5000.0}, "heartbeat_s"),
    ("plans = [2, 2]", {"plans": (2, 2)}, "plans"),
    ('host = "10.0.0.9 oops"', {"host": "10.0.0.9 oops"}, "host"),
])
def test_a_rule_lives_once_for_the_config_file_and_for_code(tmp_path, line: str, kw: dict, key: str) -> None:
    from agent.config import load_config
    from core.errors import ConfigError
    from drivers.settings_rules import SettingError

    path = tmp_path / "box.toml"
    text = _CONFIG.replace('host = "10.0.0.9"', line) if line.startswith("host") else _CONFIG + line + "\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and f"[device[0].{key}]" in str(err.value), str(err.value)
    with pytest.raises(ValueError) as direct:
        GbtSettings(**({"name": "tsc1", "host": "10.0.0.9", "port": 5000} | kw))
    assert isinstance(direct.value, SettingError) and direct.value.key == key
    path.write_text(_CONFIG + "controller_id = 7\n", encoding="utf-8")
    (dev,) = load_config(path).devices
    assert dev == GbtSettings(name="tsc1", host="10.0.0.9", port=5000, controller_id=7)  # one class for file and code
