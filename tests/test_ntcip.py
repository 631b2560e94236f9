"""NTCIP 1202: OIDs as devices.md gives them, pure decoding, green wave, driver against a UDP SNMP agent."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CommandRefused, DeviceException, DeviceTimeout, FrameError
from core.reading import Quality
from drivers.base import Driver
from drivers.ntcip import mib as n
from drivers.ntcip.driver import NtcipDriver
from drivers.ntcip.settings import NtcipSettings
from drivers.ntcip.sim import NtcipControllerSim

BASE = "1.3.6.1.4.1.1206.4.2.1"


# --- OIDs exactly as devices.md ------------------------------------------------------------------
def test_oids_match_devices_md() -> None:
    for kind, col in (("reds", 2), ("yellows", 3), ("greens", 4), ("dontwalks", 5), ("pedclears", 6),
                      ("walks", 7), ("vehcalls", 8), ("pedcalls", 9), ("nexts", 11)):
        assert n.oid_str(n.phase_status_oid(kind, 2)) == f"{BASE}.1.4.1.{col}.2"
    for kind, col in (("vehomit", 2), ("pedomit", 3), ("hold", 4), ("forceoff", 5), ("vehcall", 6), ("pedcall", 7)):
        assert n.oid_str(n.phase_control_oid(kind, 1)) == f"{BASE}.1.5.1.{col}.1"
    assert n.oid_str(n.detector_volume_oid(5)) == f"{BASE}.2.5.4.1.1.5"
    assert n.oid_str(n.detector_occupancy_oid(5)) == f"{BASE}.2.5.4.1.2.5"
    assert [n.oid_str(o) for o in (n.COORD_PATTERN_STATUS, n.LOCAL_FREE_STATUS, n.COORD_CYCLE_STATUS,
                                   n.COORD_SYNC_STATUS, n.SYSTEM_PATTERN_CONTROL)] == [
        f"{BASE}.4.10.0", f"{BASE}.4.11.0", f"{BASE}.4.12.0", f"{BASE}.4.13.0", f"{BASE}.4.14.0"]
    assert n.oid_str(n.pattern_cycle_oid(3)) == f"{BASE}.4.7.1.2.3"
    assert n.oid_str(n.pattern_offset_oid(3)) == f"{BASE}.4.7.1.3.3"
    assert n.oid_str(n.split_time_oid(2, 6)) == f"{BASE}.4.9.1.3.2.6"


# --- pure decoding -------------------------------------------------------------------------------
def test_green_wave_example_from_devices_md() -> None:
    assert n.green_wave_offsets([0, 450, 900], 12.5, 120) == [0, 36, 72]
    assert n.green_wave_offsets([1800], 12.5, 120) == [24]  # 144 s wraps modulo the cycle
    for bad in ((0, 120), (12.5, 0), (float("nan"), 120)):
        with pytest.raises(ValueError):
            n.green_wave_offsets([0], *bad)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 20_000), max_size=8), st.floats(1, 30), st.floats(30, 240))
def test_green_wave_offsets_lie_in_the_cycle_and_follow_travel_time(ds, v, c) -> None:
    for d, off in zip(ds, n.green_wave_offsets(ds, v, c)):
        assert 0 <= off < c
        drift = (d / v - off) % c
        assert min(drift, c - drift) < 1e-5


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.sets(st.integers(1, 32)))
def test_bitmap_round_trip(group: int, phases: set[int]) -> None:
    mine = {p for p in phases if (p - 1) // 8 + 1 == group}
    assert n.phases_in(group, n.bitmap_of(group, phases)) == mine


def test_phase_decoding_conflict_and_occupancy_faults() -> None:
    g = 1
    values = {n.phase_status_oid("greens", g): 0b0010_0010, n.phase_status_oid("yellows", g): 0b0000_0100,
              n.phase_status_oid("reds", g): 0b1101_1001 | 0b0010_0000,
              n.detector_occupancy_oid(1): 200, n.detector_occupancy_oid(2): 212}
    pts = ["phase2_color", "phase3_color", "phase1_color", "phase6_color", "det1_occupancy", "det2_occupancy",
           "phase9_color"]
    got = {pv.point: pv for pv in n.decode_points(pts, values)}
    assert got["phase2_color"].text == "green" and got["phase3_color"].text == "yellow"
    assert got["phase1_color"].value == n.Color.RED
    assert got["phase6_color"].quality is Quality.SUSPECT and "green+red" in got["phase6_color"].text
    assert got["det1_occupancy"].value == 100.0
    assert got["det2_occupancy"].value is None and got["det2_occupancy"].text == "open loop fault"
    assert got["phase9_color"].quality is Quality.MISSING  # group 2 not served


_points = st.sampled_from(["phase1_color", "phase8_ped", "phase3_vehcall", "phase12_pedcall", "det4_volume",
                           "det4_occupancy", "coord_pattern", "local_free", "coord_cycle", "pattern2_cycle"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_points, min_size=1, max_size=6), st.lists(st.none() | st.integers(-2**31, 2**31), min_size=20,
                                                            max_size=20), st.sampled_from(["s", "ds"]))
def test_decode_points_never_raises_on_odd_values(points, raw, unit) -> None:
    oids = n.oids_for(points)
    values = dict(zip(oids, raw))
    out = n.decode_points(points, values, time_unit=unit)
    assert [pv.point for pv in out] == points
    assert all(pv.value is None or pv.quality is Quality.GOOD for pv in out)


@pytest.mark.parametrize("point", ["phase0_color", "phase1_colour", "det300_volume", "pattern254_cycle", "x"])
def test_unknown_points_are_value_errors(point: str) -> None:
    with pytest.raises(ValueError):
        n.oids_for([point])


# --- driver against the SNMP agent ---------------------------------------------------------------
class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _drv(sim: NtcipControllerSim, **kw) -> NtcipDriver:
    base = dict(host="127.0.0.1", port=sim.port, timeout_s=0.3, retries=0, detectors=(1, 2, 4), patterns=(1, 2),
                allowed_patterns=frozenset({2, 7}))
    return NtcipDriver(NtcipSettings(name="asc1", **(base | kw)))


async def test_phases_decoded_correctly_at_every_poll_as_they_change() -> None:
    clock = Clock(1_750_000_000.0)
    async with NtcipControllerSim(clock=clock) as sim:
        drv = _drv(sim)
        await drv.open()
        points = [f"phase{p}_{k}" for p in range(1, 9) for k in ("color", "ped")]
        seen: dict[int, set[str]] = {p: set() for p in range(1, 9)}
        changes = 0
        last = None
        try:
            for _ in range(90):  # 1.7 s steps over more than a 100 s cycle
                clock.t += 1.7
                got = {r.point: r for r in await drv.read(points)}
                truth = sim.phase_state(clock.t)
                for p, (color, ped) in truth.items():
                    assert got[f"phase{p}_color"].value == color and got[f"phase{p}_ped"].value == ped, (p, clock.t)
                    seen[p].add(got[f"phase{p}_color"].text)
                state = tuple(r.value for r in got.values())
                changes += state != last
                last = state
        finally:
            await drv.close()
    assert all(s == {"red", "yellow", "green"} for s in seen.values())
    assert changes >= 12  # each stage: walk, ped clear, yellow, red, over 1.5 cycles


async def test_detectors_coordination_and_time_units() -> None:
    clock = Clock(1_750_000_030.0)
    async with NtcipControllerSim(clock=clock, time_unit="ds") as sim:
        sim.detector_fault[4] = 212
        tenths = _drv(sim, pattern_time_unit="ds")
        wrong = _drv(sim, pattern_time_unit="s")
        await tenths.open()
        await wrong.open()
        try:
            r = {x.point: x for x in await tenths.read()}
            (cycle_in_s,) = await wrong.read(["pattern2_cycle"])
        finally:
            await tenths.close()
            await wrong.close()
    for det in (1, 2):
        volume, occ = sim.detector_counts(det, clock.t)
        assert r[f"det{det}_volume"].value == volume and r[f"det{det}_occupancy"].value == occ / 2
    assert r["det4_occupancy"].quality is Quality.MISSING and r["det4_occupancy"].text == "open loop fault"
    assert (r["pattern2_cycle"].value, r["pattern2_offset"].value) == (120.0, 36.0)
    assert cycle_in_s.value == 1200.0  # the unit setting matters
    assert r["coord_pattern"].text == "pattern 1" and r["local_free"].text == "notFree"
    assert 0 <= r["coord_cycle"].value <= 100 and r["coord_cycle"].unit == "s"


async def test_set_pattern_is_guarded_and_applied() -> None:
    clock = Clock(1_750_000_000.0)
    async with NtcipControllerSim(clock=clock) as sim:
        drv = _drv(sim)
        flash = _drv(sim, allow_flash=True)
        await drv.open()
        await flash.open()
        try:
            for args in ({"pattern": 3}, {"pattern": 255}, {"pattern": 254}, {"pattern": 0}, {"pattern": "2"}, {}):
                with pytest.raises(CommandRefused):
                    await drv.write("set_pattern", args)
            with pytest.raises(CommandRefused):
                await drv.write("force_off", {"phase": 2})
            assert sim.sets == []
            await drv.write("set_pattern", {"pattern": 2})
            assert sim.sets == [(f"{BASE}.4.14.0", 2)]
            (pattern,) = await drv.read(["coord_pattern"])
            assert pattern.value == 2.0
            with pytest.raises(DeviceException) as err:  # allowed here, unknown to the controller
                await drv.write("set_pattern", {"pattern": 7})
            assert err.value.code == 10  # wrongValue
            await flash.write("set_pattern", {"pattern": 255})
            r = {x.point: x.text for x in await drv.read(["coord_pattern", "phase2_color", "phase4_color"])}
            assert r == {"coord_pattern": "flash", "phase2_color": "yellow", "phase4_color": "red"}
        finally:
            await drv.close()
            await flash.close()


async def test_snmp_failures_map_to_our_errors() -> None:
    async with NtcipControllerSim() as sim:
        ro = _drv(sim, write_community="public")
        stranger = _drv(sim, community="guess")
        drv = _drv(sim)
        for d in (ro, stranger, drv):
            await d.open()
        try:
            with pytest.raises(DeviceException) as err:
                await ro.write("set_pattern", {"pattern": 2})
            assert err.value.code == 6  # noAccess with the read community
            with pytest.raises(DeviceTimeout):
                await stranger.read(["coord_pattern"])  # wrong community: the agent stays silent
            (missing,) = await drv.read(["det20_volume"])
            assert missing.value is None and missing.quality is Quality.MISSING and missing.unit == "veh"
            with pytest.raises(CommandRefused):
                await drv.read(["phase1_colour"])
            sim.fault = "wrong_type"
            with pytest.raises(FrameError, match="expected INTEGER"):
                await drv.read(["coord_pattern"])
            sim.fault = "silence"
            with pytest.raises(DeviceTimeout):
                await drv.read(["coord_pattern"])
        finally:
            for d in (ro, stranger, drv):
                await d.close()


@pytest.mark.parametrize("kw", [{"port": 0}, {"pattern_time_unit": "min"}, {"allowed_patterns": frozenset({254})},
                                {"phases": 0}, {"community": ""}, {"timeout_s": 0}, {"detectors": (0,)}])
def test_settings_validation(kw: dict) -> None:
    with pytest.raises(ValueError):
        NtcipSettings(**({"name": "asc1", "host": "10.0.0.5"} | kw))


def test_driver_satisfies_the_protocol() -> None:
    assert isinstance(NtcipDriver(NtcipSettings(name="asc1", host="10.0.0.5")), Driver)


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
name = "asc1"
kind = "ntcip"
host = "10.0.0.5"
"""


@pytest.mark.parametrize("line, kw, key", [
    # the old parser refused these and the driver's old settings class took them; now NtcipSettings refuses them
    # (points: checked there alone, the parser no longer has its own copy)
    ('points = ["phase0_color"]', {"points": ("phase0_color",)}, "points"),
    ("detectors = [1, 1]", {"detectors": (1, 1)}, "detectors"),
    ("timeout_ms = 5", {"timeout_s": 0.005}, "timeout_ms"),
])
def test_a_rule_lives_once_for_the_config_file_and_for_code(tmp_path, line: str, kw: dict, key: str) -> None:
    from agent.config import load_config
    from core.errors import ConfigError
    from drivers.settings_rules import SettingError

    path = tmp_path / "box.toml"
    path.write_text(_CONFIG + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and f"[device[0].{key}]" in str(err.value), str(err.value)
    with pytest.raises(ValueError) as direct:
        NtcipSettings(name="asc1", host="10.0.0.5", **kw)
    assert isinstance(direct.value, SettingError) and direct.value.key == key
    path.write_text(_CONFIG, encoding="utf-8")
    (dev,) = load_config(path).devices
    assert dev == NtcipSettings(name="asc1", host="10.0.0.5")      # the file builds the very class code builds
