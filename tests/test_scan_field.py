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
from typing import Any

import pytest

from agent.errors import DeviceTimeout
from drivers.modbus import ModbusLink
from hil_tests.sims.modbus_devices import make_model
from hil_tests.sims.modbus_slave import SimSlave, serving
from hil_tests.sims.wxt530 import make_wxt530

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
START = 1_750_050_000.0  # 13:00 local: the sun is up, so the radiation registers hold values
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


async def test_the_simulated_slave_is_deaf_after_other_units_frames_and_fills_unmapped_registers() -> None:
    slaves, _ = field_bus()
    buses: list[Any] = []
    async with serving(slaves, rtu=True, baudrate=19200, buses=buses) as info:
        async with ModbusLink.rtu(info["rtu_path"], baudrate=19200, parity="N", timeout_s=0.1) as link:
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
