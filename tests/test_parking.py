"""The parking kind: settings errors, and the driver against the simulator on a real pty (detectors,
counter, LED-485 and Alpha signs on one line). The pure codec and rule: test_parking_codec.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tomllib

from core.config_reader import Table
from core.errors import CommandRefused, ConfigError, DeviceTimeout, FrameError
from core.reading import Quality, RecordClass
from drivers.kind import ParseContext
from drivers.parking import KIND
from drivers.parking.settings import ParkingSettings, parse, point_names

LOT = """
name = "lot-north"
kind = "parking"
port = "/dev/ttyUSB1"
poll_s = 1
refresh_s = 30
allow_commands = ["set_sign_text", "clear_sign_text", "set_capacity", "reset_count"]
[[zones]]
name = "A"
capacity = 3
detectors = [{ unit = 2, register = 0, count = 2 }, { unit = 4, register = 10, count = 2 }]
[[zones]]
name = "B"
capacity = 5
counter = { unit = 3, entries = 0, exits = 1 }
initial_occupied = 1
[[signs]]
type = "led485"
unit = 10
zone = "A"
name = "entrance-a"
[[signs]]
type = "alpha"
address = "01"
name = "gate"
"""


def parse_lot(text: str = LOT, change: Any = None) -> ParkingSettings:
    """Parse the example, after `change(data)` edits its TOML data; unknown keys are refused."""
    data = tomllib.loads(text)
    data.pop("kind")  # the loader reads `kind` to pick the parser
    if change is not None:
        change(data)
    t = Table(data, "box.toml", "device[0]")
    s = parse(t, ParseContext(base_dir=Path(".")))
    t.reject_unknown()
    return s


# --- settings ------------------------------------------------------------------------------------
def test_the_example_parses_into_typed_settings() -> None:
    s = parse_lot()
    assert s.port == "/dev/ttyUSB1" and s.baudrate == 9600 and s.timeout_s == 0.3 and s.refresh_s == 30
    assert [z.bays for z in s.zones] == [4, 0] and s.zones[1].counter is not None
    assert s.signs[1].zones == ("A", "B") and s.signs[1].address == "01"
    assert "A.bay4" in point_names(s) and "gate.shown" in point_names(s) and "B.entries" in point_names(s)
    assert KIND.serial_port(s) == "/dev/ttyUSB1" and KIND.commands == s.allow_commands


def zone(i: int, **kv: Any) -> Any:
    return lambda d: d["zones"][i].update(kv)


def sign(i: int, **kv: Any) -> Any:
    return lambda d: d["signs"][i].update(kv)


@pytest.mark.parametrize("change, key, words", [
    (lambda d: d.update(port=""), "device[0].port", "non-empty"),
    (lambda d: d.update(baudrate=9601), "device[0].baudrate", "standard rate"),
    (lambda d: d.update(allow_commands=["open_barrier"]), "device[0].allow_commands", "no command"),
    (lambda d: d.update(zones=[]), "device[0].zones", "1 to 32"),
    (zone(1, capacity=-1), "device[0].zones[1].capacity", "out of range"),
    (zone(1, detectors=[{"unit": 5, "register": 0, "count": 1}]), "device[0].zones[1].detectors", "one of them"),
    (zone(1, counter={"unit": 3, "entries": 0, "exits": 0}), "device[0].zones[1].counter.exits", "same register"),
    (zone(0, detectors=[{"unit": 2, "register": 0, "count": 126}]), "device[0].zones[0].detectors[0].count",
     "out of range"),
    (zone(0, detectors=[{"unit": 2, "register": 0, "count": 2}, {"unit": 2, "register": 1, "count": 2}]),
     "device[0].zones[0]", "overlap"),
    (zone(0, initial_occupied=2), "device[0].zones[0].initial_occupied", "only a counter zone"),
    (zone(0, name="A B"), "device[0].zones[0].name", "invalid format"),
    (sign(0, unit=2), "device[0].signs[0].unit", "already used"),
    (sign(0, zone="Z"), "device[0].signs[0].zone", "no such zone"),
    (sign(0, digits=7), "device[0].signs[0].digits", "out of range"),
    (sign(1, address="0G"), "device[0].signs[1].address", "invalid format"),
    (sign(1, colour="red"), "device[0].signs[1].colour", "unknown key"),
    (sign(1, type="vms"), "device[0].signs[1].type", "unknown value"),
    (lambda d: d.update(points=["A.bay9"]), "device[0].points", "unknown point"),
    (lambda d: d.update(refresh_s=0.5), "device[0].refresh_s", "out of range"),
    (lambda d: d.update(poll_s=60), "device[0].refresh_s", "shorter than poll_s"),
    (lambda d: d.update(timeout_ms=5), "device[0].timeout_ms", "out of range"),
])
def test_every_bad_value_names_its_key(change: Any, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_lot(change=change)
    assert f"[{key}]" in str(info.value) and words in str(info.value) and "box.toml" in str(info.value)


def test_kind_loads_settings_without_the_driver() -> None:
    code = ("import sys, drivers.parking; "
            "print(any(m in sys.modules for m in ('drivers.parking.driver', 'serial', 'drivers.parking.sim')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


# --- the driver against the simulator on a pty -----------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def lot() -> Any:
    from drivers.parking.sim import ParkingSim

    layout = parse_lot()
    async with ParkingSim(layout) as sim:
        clock = Clock()
        driver = KIND.build(replace(layout, port=sim.port), object())
        driver._mono = clock
        await driver.open()
        try:
            yield sim, driver, clock
        finally:
            await driver.close()


def values(readings: list) -> dict[str, Any]:
    return {r.point: (r.value if r.value is None or r.text is None else r.text) for r in readings}


async def test_cars_arrive_and_leave_and_the_signs_follow(lot: Any) -> None:
    sim, driver, _ = lot
    v = values(await driver.read())
    assert v["A.occupied"] == 0 and v["A.free"] == 3 and v["B.occupied"] == 1 and v["B.free"] == 4
    assert sim.shows("entrance-a") == "3" and sim.shows("gate") == "A 3  B 4"
    sim.park("A", 1)
    sim.park("A", 4)  # the second detector block, on another unit
    sim.pass_gate("B", entries=3, exits=1)
    v = values(await driver.read())
    assert (v["A.bay1"], v["A.bay2"], v["A.bay4"], v["A.free"]) == (1.0, 0.0, 1.0, 1)
    assert (v["B.entries"], v["B.exits"], v["B.occupied"]) == (3.0, 1.0, 3)
    assert sim.shows("entrance-a") == "1" and sim.shows("gate") == "A 1  B 2"
    sim.park("A", 2)
    sim.pass_gate("B", entries=5)  # over-full: free stays 0
    v = values(await driver.read())
    assert v["A.free"] == 0 and v["B.free"] == 0 and v["entrance-a.shown"] == "FULL"
    assert sim.shows("entrance-a") == "FULL" and sim.shows("gate") == "A FULL  B FULL"
    sim.park("A", 4, 0)
    await driver.read()
    assert sim.shows("entrance-a") == "1"


async def test_counter_wraps_and_a_restarted_counter_is_not_thousands_of_cars(lot: Any) -> None:
    sim, driver, _ = lot
    sim.regs[(3, 0)], sim.regs[(3, 1)] = 65534, 65000
    await driver.read()
    sim.pass_gate("B", entries=4, exits=1)  # entries wrap past 65535
    v = values(await driver.read())
    assert v["B.entries"] == 2.0 and v["B.occupied"] == 4
    sim.regs[(3, 0)] = sim.regs[(3, 1)] = 0  # the counter restarted
    readings = await driver.read()
    assert values(readings)["B.occupied"] == 4
    assert "restarted" in next(r.text for r in readings if r.point == "B.entries")


async def test_a_faulty_bay_counts_occupied_and_is_reported_missing(lot: Any) -> None:
    sim, driver, _ = lot
    sim.park("A", 3, 0xFF)
    readings = {r.point: r for r in await driver.read()}
    assert readings["A.bay3"].value is None and readings["A.bay3"].quality == Quality.MISSING
    assert "fault code 255" in readings["A.bay3"].text and readings["A.occupied"].value == 1


async def test_signs_are_rewritten_after_a_power_cycle(lot: Any) -> None:
    sim, driver, clock = lot
    await driver.read()
    writes = sim.writes
    await driver.read()
    assert sim.writes == writes  # nothing changed, not due: the line is left alone
    sim.power_cycle()
    assert sim.shows("entrance-a") == "" and sim.shows("gate") == ""
    clock.t += 30  # refresh_s
    await driver.read()
    assert sim.shows("entrance-a") == "3" and sim.shows("gate") == "A 3  B 4"


async def test_a_silent_line_is_a_timeout_and_garbage_a_frame_error(lot: Any) -> None:
    from drivers.parking.sim import Fault

    sim, driver, _ = lot
    sim.fault = Fault.SILENCE
    with pytest.raises(DeviceTimeout, match="did not answer"):
        await driver.read()
    sim.fault = Fault.GARBAGE
    with pytest.raises(FrameError):
        await driver.read()
    sim.fault = Fault.NONE
    await asyncio.sleep(0.06)  # the line goes quiet; the next poll is clean again
    assert values(await driver.read())["A.free"] == 3


async def test_one_silent_unit_fails_its_zone_only(lot: Any) -> None:
    sim, driver, _ = lot
    await driver.read()
    sim.regs = {k: v for k, v in sim.regs.items() if k[0] != 3}  # the counter's unit is gone
    readings = {r.point: r for r in await driver.read()}
    assert readings["B.occupied"].quality == Quality.COMM_FAILURE and readings["A.free"].value == 3
    assert sim.shows("gate") == "A 3  B 4"  # the sign keeps its last content


async def test_commands_override_capacity_and_count(lot: Any) -> None:
    sim, driver, _ = lot
    await driver.read()
    await driver.write("set_sign_text", {"zone": "A", "text": "closed"})
    assert sim.shows("entrance-a") == "CLOSED" and sim.shows("gate") == "A CLOSED  B 4"
    await driver.read()
    assert sim.shows("entrance-a") == "CLOSED"  # the override outlives polls
    await driver.write("clear_sign_text", {"zone": "A"})
    assert sim.shows("entrance-a") == "3"
    await driver.write("set_capacity", {"zone": "B", "capacity": 10})
    assert sim.shows("gate") == "A 3  B 9"
    await driver.write("reset_count", {"zone": "B", "occupied": 10})
    assert sim.shows("gate") == "A 3  B FULL"
    for command, args, reason in [
        ("reset_count", {"zone": "A"}, "counts with detectors"),
        ("set_sign_text", {"zone": "A", "text": "P@RK"}, "cannot show"),
        ("set_sign_text", {"zone": "A", "text": "TOO LONG"}, "cannot show"),
        ("set_capacity", {"zone": "Q", "capacity": 1}, "must name a zone"),
        ("set_capacity", {"zone": "A", "capacity": -1}, "integer 0..32767"),
        ("open_barrier", {}, "unknown command"),
    ]:
        with pytest.raises(CommandRefused, match=reason):
            await driver.write(command, args)
    assert sim.shows("gate") == "A 3  B FULL"


async def test_commands_through_the_agent_command_path_are_allowed_or_refused_and_audited(lot: Any) -> None:
    from agent.commands import CommandRouter

    sim, driver, _ = lot
    await driver.read()
    audit: list = []

    async def emit(rows: list) -> None:
        audit.extend(rows)

    router = CommandRouter({"lot-north": driver}, {"lot-north": ["set_sign_text"]}, emit)
    result = await router.execute("lot-north", "set_sign_text", {"zone": "A", "text": "OPEN"}, "test")
    assert result.status == "done" and sim.shows("entrance-a") == "OPEN"
    with pytest.raises(CommandRefused, match="not allowed"):
        await router.execute("lot-north", "reset_count", {"zone": "B"}, "test")
    assert [json.loads(r.text)["result"] for r in audit] == ["done", "refused"]
    assert all(r.cls == RecordClass.EVENT and r.point == "_command" for r in audit)


def test_the_kind_is_registered_with_its_simulator() -> None:
    from drivers.registry import KINDS

    assert KINDS["parking"] is KIND and set(KIND.simulators()) == {"parking"}


async def test_the_sim_command_serves_a_pty_and_a_control_port(tmp_path: Path) -> None:
    from drivers.parking.driver import ParkingDriver

    layout = tmp_path / "lot.toml"
    layout.write_text(LOT.replace('kind = "parking"\n', ""))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hil_tests.sims.cli", "parking", "--layout",
                                                str(layout), "--control", "0", stdout=asyncio.subprocess.PIPE)
    try:
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        reader, writer = await asyncio.open_connection("127.0.0.1", ready["control_port"])

        async def ask(msg: dict) -> dict:
            writer.write(json.dumps(msg).encode() + b"\n")
            return json.loads(await reader.readline())

        assert (await ask({"park": "A", "bay": 2}))["ok"]
        assert not (await ask({"park": "Q", "bay": 1}))["ok"]
        driver = ParkingDriver(replace(parse_lot(), port=ready["pty"]))
        await driver.open()
        try:
            assert values(await driver.read())["A.free"] == 2
        finally:
            await driver.close()
        assert await ask({"shows": "entrance-a"}) == {"ok": True, "shows": "2"}
        writer.close()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
