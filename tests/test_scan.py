"""`quanedge scan` against simulated buses: finds the line, the slaves and their models, within budget."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.scan import ScanResult, parse_units, render_toml, scan_bus
from drivers.modbus.sim import make_model
from drivers.modbus.sim_slave import SimSlave, serving
from drivers.modbus.timing import LineTiming

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
START = 1_750_050_000.0
MIXED = [("pm_transmitter", 1), ("vaisala_wxt530", 5), ("lufft_ws", 6), ("small_weather_station", 7),
         ("renke_wind_direction", 8), ("renke_wind_speed", 9), ("dfrobot_sen0575", 192), ("outdoor_six_gas", 255)]
EXPECTED = {1: ("pm_transmitter", "low"), 5: ("vaisala_wxt530", "high"), 6: ("lufft_ws", "medium"),
            7: ("small_weather_station", "medium"), 8: ("renke_wind_direction", "medium"),
            9: ("renke_wind_speed", "medium"), 192: ("dfrobot_sen0575", "high"), 255: ("outdoor_six_gas", "low")}


def slaves(specs: list[tuple[str, int]], **kw: Any) -> list[SimSlave]:
    return [make_model(m, u, seed=i, start=START, **kw)[0] for i, (m, u) in enumerate(specs)]


def box_config(tmp_path: Path, sections: str) -> Path:
    path = tmp_path / "box.toml"
    path.write_text(f'[box]\nid = "pole-7"\ndata_dir = "{tmp_path}/data"\n[uplink]\nkind = "mqtt"\n'
                    f'[uplink.mqtt]\nhost = "127.0.0.1"\n\n{sections}')
    return path


async def test_scan_finds_the_line_and_identifies_every_model(tmp_path: Path) -> None:
    async with serving(slaves(MIXED), rtu=True, baudrate=4800, turnaround_s=0.01) as info:
        said: list[str] = []
        result = await scan_bus(info["rtu_path"], units=parse_units("1-12,192,255"), progress=said.append)
    assert result.line == LineTiming(4800, "N") and result.complete
    assert {s.unit: (s.profile, s.confidence) for s in result.slaves} == EXPECTED
    trying = [m for m in said if m.startswith("trying")]
    assert trying[:2] == ["trying 9600 8N1 (units 1..3)", "trying 4800 8N1 (units 1..3)"]
    assert any("line is 4800 8N1" in m for m in said)
    assert all(s.evidence for s in result.slaves)
    text = render_toml(result, bus_name="wx", poll_s=30)
    assert "unit 255 is outside the RTU range 1..247" in text and '# profile = "outdoor_six_gas"' in text
    assert "# capacity: polling these every 30 s takes" in text
    cfg = load_config(box_config(tmp_path, text))  # ready to paste: the agent's own loader accepts it
    assert [(b.name, b.port, b.baudrate, b.parity) for b in cfg.buses] == [("wx", info["rtu_path"], 4800, "N")]
    assert {d.unit: d.profile_name for d in cfg.devices} == {u: p for u, (p, _) in EXPECTED.items() if u != 255}
    assert all(d.poll_s == 30 and d.bus == "wx" for d in cfg.devices)
    assert cfg.buses[0].timeout_s >= 0.1


async def test_scan_command_prints_a_config_for_a_lufft_at_19200(tmp_path: Path) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "quanedge")
    async with serving(slaves([("lufft_ws", 3)], model_code=15), rtu=True, baudrate=19200, parity="E") as info:
        proc = await asyncio.create_subprocess_exec(
            exe, "scan", "--port", info["rtu_path"], "--units", "1-4", "--budget", "30", "--poll-s", "5",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    # A pty cannot carry even parity (see agent.scan): the 8E1 settings are refused and noted, and the
    # Lufft is found at 19200 8N1 - on a real adapter it answers at 19200 8E1, which is tried first.
    assert "the port refused 19200 8E1" in text and "baudrate = 19200" in text
    assert "# unit 3: lufft_ws, high confidence: identification 0x0F1F is Lufft WS type code 15" in text
    assert "line is 19200 8N1" in err.decode()
    cfg = load_config(box_config(tmp_path, text))
    assert [(d.name, d.profile_name, d.unit, d.poll_s) for d in cfg.devices] == [("lufft-ws-3", "lufft_ws", 3, 5.0)]
    proc = await asyncio.create_subprocess_exec(exe, "scan", "--port", str(tmp_path / "ttyUSB9"),
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and "no such serial port" in err.decode()


async def test_scan_keeps_to_its_time_budget() -> None:
    async with serving(slaves([("dfrobot_sen0575", 200)]), rtu=True, baudrate=9600) as info:
        t0 = time.monotonic()
        result = await scan_bus(info["rtu_path"], lines=[LineTiming(9600, "N")], budget_s=1.5)
        elapsed = time.monotonic() - t0
    assert not result.complete and result.line is None  # unit 200 was not reached within 1.5 s
    assert 1.0 < elapsed < 1.5 + 0.3 and result.elapsed_s == pytest.approx(elapsed, abs=0.05)
    assert any("time budget of 1.5 s spent" in n for n in result.notes)
    assert render_toml(result).startswith("# quanedge scan") and "no Modbus slave found" in render_toml(result)


async def test_empty_bus_and_unknown_devices() -> None:
    async with serving(slaves([("renke_wind_speed", 1)]), rtu=True, baudrate=9600) as info:
        result = await scan_bus(info["rtu_path"], lines=[LineTiming(4800, "N"), LineTiming(2400, "N")],
                                units=[1, 2], budget_s=20)
    assert result.line is None and result.complete and result.slaves == []  # it is at 9600: silence elsewhere
    assert "no slave answered" in result.notes[0]
    odd = SimSlave(4, holding={a: 4000 for a in range(3)})  # answers, fits nothing we know
    twins = SimSlave(6, holding={0: 1})  # two slaves on one address answer at once: garbage on the line
    twins.set_fault("garbage")
    async with serving([odd, twins], rtu=True, baudrate=9600) as info:
        result = await scan_bus(info["rtu_path"], units=[4, 5, 6], budget_s=20)
    assert [(s.unit, s.profile, s.confidence) for s in result.slaves] == [(4, None, "none"), (6, None, "none")]
    assert "two slaves sharing this address" in result.slaves[1].evidence
    text = render_toml(result)
    assert '# profile = "?"' in text and "# unit 6: unknown device, none confidence: answers with garbled" in text


def test_parse_units_and_bad_arguments() -> None:
    assert parse_units("1-3,192, 255") == [1, 2, 3, 192, 255]
    assert len(parse_units("1-247,255")) == 248
    for bad in ("0-3", "5-2", "a", "1-300", ""):
        with pytest.raises(ValueError, match="unit range"):
            parse_units(bad)
    with pytest.raises(ValueError, match="at least one"):
        asyncio.run(scan_bus("/dev/null", units=[]))
    assert "no Modbus slave found" in render_toml(ScanResult("/dev/x", None, notes=["nothing"]))
