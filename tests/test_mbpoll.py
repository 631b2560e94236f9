"""A third-party Modbus master (the `mbpoll` CLI, libmodbus) against our simulator.

If mbpoll reads what the profile expects, the simulator speaks real Modbus, not just whatever our
own driver happens to accept.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.codec import encode_point
from drivers.modbus.profile import load_profile
from drivers.modbus.sim_slave import SimSlave, serving
from drivers.modbus.sim_wxt530 import Wxt530Registers, make_wxt530

MBPOLL = shutil.which("mbpoll")
pytestmark = pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed (apt-get install -y mbpoll)")
PROFILE = load_profile("vaisala_wxt530")
# "[32]: \t195", or for values >= 0x8000 "[4]: \t65535 (-1)" (unsigned, then signed)
VALUE_LINE = re.compile(r"^\[(\d+)\]:\s+(\d+)(?: \(-?\d+\))?\s*$", re.MULTILINE)


async def mbpoll(*args: str) -> tuple[int, dict[int, int], str]:
    """Run mbpoll once; returns (exit code, {reference: 16-bit value}, stderr)."""
    assert MBPOLL is not None
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    values = {int(ref): int(v) for ref, v in VALUE_LINE.findall(out.decode())}
    return proc.returncode or 0, values, err.decode()


@pytest.fixture
async def sim() -> AsyncIterator[tuple[dict[str, Any], Wxt530Registers, SimSlave]]:
    wxt_slave, wxt = make_wxt530(1, seed=3)
    plain = SimSlave(7, holding={a: 0 for a in range(10)})
    async with serving([wxt_slave, plain], tcp_port=0, rtu=True) as info:
        yield info, wxt, plain


def target(info: dict[str, Any], transport: str) -> list[str]:
    if transport == "tcp":
        return ["-m", "tcp", "-p", str(info["tcp_port"]), "-o", "1", "127.0.0.1"]
    return ["-m", "rtu", "-b", "19200", "-P", "none", "-s", "1", "-o", "1", info["rtu_path"]]


def expected(wxt: Wxt530Registers, first: int, count: int) -> dict[int, int]:
    """What the profile says the registers hold for the simulator's last physical values."""
    out = {}
    for p in PROFILE.points:
        if first <= p.address < first + count:
            out[p.address] = encode_point(p, wxt.values[p.name])[0]
    return out


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_mbpoll_reads_temperature_block(sim: Any, transport: str) -> None:
    info, wxt, _ = sim
    *opts, dev = target(info, transport)
    # -t 3: input registers (function 04); references are 1-based, so 32 is address 0x001F.
    code, values, err = await mbpoll(*opts, "-a", "1", "-t", "3", "-r", "32", "-c", "4", "-1", dev)
    assert code == 0, err
    assert values == {32 + a - 0x1F: v for a, v in expected(wxt, 0x1F, 4).items()}
    assert values[32] == round(wxt.values["air_temperature"] * 10) & 0xFFFF  # devices.md: S16 x10


async def test_mbpoll_reads_negative_temperatures_as_twos_complement() -> None:
    slave, wxt = make_wxt530(1, seed=4, weather={"mean_temp_c": -20.0})
    async with serving([slave], rtu=True) as info:
        *opts, dev = target(info, "rtu")
        code, values, err = await mbpoll(*opts, "-a", "1", "-t", "3", "-0", "-r", "31", "-1", dev)
    assert code == 0, err
    assert wxt.values["air_temperature"] is not None and wxt.values["air_temperature"] < -5
    assert values == {31: 0x10000 + round(wxt.values["air_temperature"] * 10)}


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_mbpoll_reads_the_manuals_example_query(sim: Any, transport: str) -> None:
    info, wxt, _ = sim
    *opts, dev = target(info, transport)
    # 01 04 00 0A 00 1C: 28 input registers from 0x000A, PDU addressing (-0)
    code, values, err = await mbpoll(*opts, "-a", "1", "-t", "3", "-0", "-r", "10", "-c", "28", "-1", dev)
    assert code == 0, err
    assert len(values) == 28
    for address, v in expected(wxt, 0x0A, 28).items():
        assert values[address] == v, hex(address)
    assert values[0x17] == values[0x24] == 32767
    code, values, err = await mbpoll(*opts, "-a", "1", "-t", "3", "-0", "-r", "0", "-1", dev)
    assert (code, values) == (0, {0: 0x0603}), err


async def test_mbpoll_sees_exceptions_and_silence_on_rtu(sim: Any) -> None:
    info, _, _ = sim
    *opts, dev = target(info, "rtu")
    code, _, err = await mbpoll(*opts, "-a", "1", "-t", "3", "-0", "-r", "1", "-1", dev)
    assert code != 0 and "Illegal data address" in err
    code, _, err = await mbpoll(*opts[:-2], "-o", "0.3", "-a", "5", "-t", "3", "-r", "1", "-1", dev)
    assert code != 0 and "timed out" in err


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_mbpoll_writes_holding_registers(sim: Any, transport: str) -> None:
    info, _, plain = sim
    *opts, dev = target(info, transport)
    code, _, err = await mbpoll(*opts, "-a", "7", "-t", "4", "-r", "3", "-1", dev, "123", "65535", "7")
    assert code == 0, err
    assert [plain.holding[a] for a in (2, 3, 4)] == [123, 65535, 7]
    code, _, err = await mbpoll(*opts, "-a", "7", "-t", "4", "-r", "10", "-1", dev, "77")
    assert code == 0, err
    assert plain.holding[9] == 77
    assert [entry[0] for entry in plain.log] == [16, 6]
    code, values, err = await mbpoll(*opts, "-a", "7", "-t", "4", "-r", "3", "-c", "3", "-1", dev)
    assert (code, values) == (0, {3: 123, 4: 65535, 5: 7}), err
