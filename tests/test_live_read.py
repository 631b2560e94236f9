"""`quanedge agent read` (a real process) against a simulated slave on a pty: the table names quality
and decodes the WXT530's model/software register."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from drivers.modbus.sim_slave import SimSlave, serving

WXT_BLOCK = range(0x000A, 0x0026)


def crafted_wxt530() -> SimSlave:
    """A WXT530 map with one value of each kind: good, missing (32767), out of range."""
    regs = {0x0000: 0x0312}  # WXT533, software 0x12
    regs.update({a: 100 for a in WXT_BLOCK})  # 10.0 of everything: plausible
    regs.update({0x000A: 0x7FFF, 0x000E: 10132, 0x001F: 700, 0x001A: 100})  # RH missing, 70.0 degC out of range
    return SimSlave(1, input=regs)


async def test_agent_read_shows_quality_names_not_numbers(tmp_path: Path) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "quanedge")
    async with serving([crafted_wxt530()], rtu=True, baudrate=19200) as info:
        cfg = tmp_path / "box.toml"
        cfg.write_text(f'[box]\nid = "pole-7"\ndata_dir = "{tmp_path}/data"\n[uplink]\nkind = "mqtt"\n'
                       '[uplink.mqtt]\nhost = "127.0.0.1"\n\n'
                       f'[[bus]]\nname = "b1"\nkind = "rtu"\nport = "{info["rtu_path"]}"\nbaudrate = 19200\n'
                       'parity = "N"\ntimeout_ms = 300\n\n'
                       '[[device]]\nname = "wxt-1"\nbus = "b1"\nprofile = "vaisala_wxt530"\nunit = 1\npoll_s = 5\n')
        proc = await asyncio.create_subprocess_exec(
            exe, "agent", "read", "--config", str(cfg), "--device", "wxt-1", "--count", "1", "--interval", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    rows = {cells[0]: cells[1:] for line in out.decode().splitlines()
            if len(cells := [c.strip() for c in line.strip().strip("│┃|").split("│")]) == 4}
    assert rows["relative_humidity"] == ["missing", "%", "missing"], rows
    assert rows["air_temperature"] == ["70", "degC", "out_of_range"], rows
    assert rows["air_pressure"] == ["1013.2", "hPa", "good"], rows
    # register 0x0000 = 0x0312 (786): model 3 (WXT533), software version 0x12, not the raw word
    assert (rows["model_number"], rows["software_version"]) == (["3", "", "good"], ["18", "", "good"]), rows
    assert not any(q.isdigit() for _, _, q in rows.values()), rows  # never the bare number
