"""Issue 11, the third-party slave: `quanedge scan` on a bus where slaves stay deaf ~0.4 s after a
frame addressed to another unit, and one answers every register (with 0) it does not have.

- the simulators do what the field did (deafness on the wire, a filler for unmapped registers);
- scan paces and retries, so it finds and identifies them; without pacing it does not;
- identification takes several registers: a WXT530 is a WXT530 whatever the filler, contradicting
  registers give "unknown";
- the pasted config never reads a value from a register the device does not have.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.devices import make_link
from agent.scan import ScanResult, render_toml, scan_bus
from core.errors import DeviceTimeout
from drivers.modbus.driver import ModbusDevice, ModbusLink
from drivers.modbus.sim import make_model
from drivers.modbus.sim_slave import SimSlave, serving
from drivers.modbus.sim_wxt530 import make_wxt530
from drivers.modbus.timing import LineTiming

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
START = 1_750_050_000.0  # 13:00 local: the sun is up, so the radiation registers hold values
LINE = LineTiming(19200, "N")
DEAF_S = 0.4


def field_bus() -> tuple[list[SimSlave], dict[int, set[int]]]:
    """Unit 1: the field slave (a WXT533 answering 0 for registers it lacks, deaf after other units'
    frames); unit 5: a well-behaved Renke wind speed; unit 7: a WXT536 as the manual has it, deaf too.
    Also returns, per unit, the input registers the device really has."""
    field, field_regs = make_wxt530(1, seed=1, start=START, model_number=3, software_version=0x12,
                                    deaf_s=DEAF_S, unmapped=0)
    faithful, faithful_regs = make_wxt530(7, seed=2, start=START, deaf_s=DEAF_S)
    renke = make_model("renke_wind_speed", 5, seed=3, start=START)[0]
    return [field, renke, faithful], {1: set(field_regs.input), 7: set(faithful_regs.input)}


def box_config(tmp_path: Path, sections: str) -> Path:
    path = tmp_path / "box.toml"
    path.write_text(f'[box]\nid = "pole-7"\ndata_dir = "{tmp_path}/data"\n[uplink]\nkind = "mqtt"\n'
                    f'[uplink.mqtt]\nhost = "127.0.0.1"\n\n{sections}')
    return path


async def test_the_simulated_slave_is_deaf_after_other_units_frames_and_fills_unmapped_registers() -> None:
    slaves, _ = field_bus()
    buses: list[Any] = []
    async with (serving(slaves, rtu=True, baudrate=19200, buses=buses) as info,
                ModbusLink.rtu(info["rtu_path"], baudrate=19200, parity="N", timeout_s=0.1) as link):
        assert len(await link.read_registers(3, 0, 1, 5)) == 1            # unit 5 answers...
        with pytest.raises(DeviceTimeout):
            await link.read_registers(4, 0, 1, 1)                          # ...so unit 1 is deaf
        await asyncio.sleep(DEAF_S)
        assert await link.read_registers(4, 0, 1, 1) == [0x0312]           # and hears after 0.4 s
        assert await link.read_registers(4, 48, 3, 1) == [0, 0, 0]         # a register it lacks: 0
        await asyncio.sleep(DEAF_S)
        with pytest.raises(Exception, match="illegal data address"):
            await link.read_registers(4, 48, 3, 7)                         # the faithful one: exception 02
    assert buses[0].deaf_drops == 1 and slaves[0].ignored == 1


async def scan(path: str, units: list[int], **kw: Any) -> ScanResult:
    return await scan_bus(path, lines=[LINE], units=units, budget_s=60, **kw)


async def test_scan_paces_and_retries_so_it_finds_and_identifies_deaf_slaves(tmp_path: Path) -> None:
    slaves, has = field_bus()
    async with serving(slaves, rtu=True, baudrate=19200) as info:
        fast = await scan(info["rtu_path"], list(range(1, 11)), pace_s=0)  # what the field got
        await asyncio.sleep(DEAF_S)  # the first scan's last frames must not make unit 1 deaf to the next
        result = await scan(info["rtu_path"], list(range(1, 11)))
        text = render_toml(result, poll_s=10)
        cfg = load_config(box_config(tmp_path, text))
        readings = {}
        async with make_link(cfg.buses[0]) as link:
            for dev in cfg.devices:  # each alone, as the printed note says
                await asyncio.sleep(0.6)
                readings[dev.unit] = await ModbusDevice(dev.name, link, dev.unit, dev.profile).read()
    by_unit = {s.unit: (s.profile, s.confidence) for s in fast.slaves}
    assert by_unit == {1: (None, "none"), 5: ("renke_wind_speed", "medium")}, fast.slaves  # 7 missed, 1 unknown
    assert "went silent on some reads" in fast.slaves[0].evidence, fast.slaves[0]
    by_unit = {s.unit: (s.profile, s.confidence) for s in result.slaves}
    assert by_unit == {1: ("vaisala_wxt530", "medium"), 5: ("renke_wind_speed", "medium"),
                       7: ("vaisala_wxt530", "high")}, result.slaves
    field = result.slaves[0].evidence
    assert "WXT533, software 18" in field and "input 40 = 0" in field, field
    assert result.paced == {7} and result.retries >= 7  # every silent unit was asked twice
    assert "unit(s) 7 answered only when asked again" in text
    assert {d.unit: d.profile_name for d in cfg.devices} == {1: "vaisala_wxt530", 5: "renke_wind_speed",
                                                               7: "vaisala_wxt530"}
    # the pasted config reads values only from registers the devices have
    for unit in (1, 7):
        profile = {p.name: p for p in cfg.devices[[d.unit for d in cfg.devices].index(unit)].profile.points}
        valued = [r for r in readings[unit] if r.value is not None]
        assert len(valued) >= 20, readings[unit]
        assert all(profile[r.point].address in has[unit] for r in valued)
        assert not any(r.point.startswith("rain") for r in readings[unit])
    model = {r.point: r.value for r in readings[1]}
    assert (model["model_number"], model["software_version"]) == (3, 18)


def wxt_registers(changes: dict[int, int] | None = None) -> dict[int, int]:
    _, regs = make_wxt530(1, seed=4, start=START)
    return {**regs.input, **(changes or {})}


@pytest.mark.parametrize("case, slave, why", [
    ("min above max", SimSlave(3, input=wxt_registers({0x000B: 900, 0x000C: 100})),
     "relative_humidity min/avg/max 90/"),
    ("both maps", SimSlave(3, input=wxt_registers({48: 1234, 49: 0, 50: 250, 83: 1500, 84: 300, 85: 2800, 86: 1400})),
     "registers only a WXT530 has"),
    ("answers anything with one value", SimSlave(3, unmapped=0x0603), "none of the registers that tell"),
    ("answers anything with zero", SimSlave(3, unmapped=0), "nothing else confirms it"),
], ids=lambda v: v if isinstance(v, str) and " " in v else "")
async def test_inconsistent_evidence_is_unknown_and_commented_out(case: str, slave: SimSlave, why: str) -> None:
    async with serving([slave], rtu=True, baudrate=19200) as info:
        result = await scan(info["rtu_path"], [3])
    [found] = result.slaves
    assert (found.profile, found.confidence) == (None, "none") and why in found.evidence, found
    text = render_toml(result)
    assert '# profile = "?"' in text and "\n[[device]]" not in text
