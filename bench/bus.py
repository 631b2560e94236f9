"""Bus benchmark (issue 3). Prints one JSON object.

The simulators run in their own process (`quanedge sim modbus`, or this module's `serve-tcp` mode),
as a real bus or real devices would; the agent side is the real scheduler, driver and link.

- bus_utilisation: 8 slaves of 12-18 points (4 all-in-one stations, 2 WXT530, 2 Lufft) on one
  simulated RS-485 line at 9600 8N1, every device polled as fast as the bus allows (poll_s = 0.01).
  Achieved share of the wire-time limit: the sum, over the polls that completed, of each poll's
  wire time per drivers.modbus.timing (request + t3.5 + turnaround + reply + t3.5, devices.md's
  numbers, with the simulated slaves' turnaround), divided by the elapsed time. 1.0 = not one
  microsecond of the line wasted.
- silent_slave_delay_ms: the same 8 slaves polled every 1 s (about half the bus), run once with all
  answering and once with one of them silent (an absent RS-485 slave); the worst extra start delay
  of the other seven's polls in the second run over the first. Measured with the link as the agent
  builds it (another unit waits 2 x t3.5 after a failure, the same unit the timeout) and, for
  comparison, with the old rule (every unit waits the timeout).
- modbus_tcp_points_per_s: 50 simulated Modbus TCP devices (Lufft WS map: 26 points in 4 requests,
  one TCP server each, all in one simulator process) polled as fast as possible, one scheduler per
  connection, all in one agent process; decoded device points emitted per second (derived rates
  and failed points not counted). QUANEDGE_BENCH_TCP_MODEL picks another profile.

Environment: QUANEDGE_BENCH_BUS_S (seconds per measurement, default 20), QUANEDGE_BENCH_TURNAROUND_MS
(simulated slave turnaround, default 5: the fast end of devices.md's 5-50 ms, the hardest case).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from agent.scheduler import BusScheduler, PolledDevice, PollRecord
from core.reading import Quality, Reading, RecordClass
from drivers.modbus.driver import ModbusDevice, ModbusLink
from drivers.modbus.profile import LineDefaults, load_profile
from drivers.modbus.sim_slave import set_fault

RUN_S = float(os.environ.get("QUANEDGE_BENCH_BUS_S", "20"))
TURNAROUND_S = float(os.environ.get("QUANEDGE_BENCH_TURNAROUND_MS", "5")) / 1000
TIMEOUT_S = 0.2
LINE = LineDefaults(9600, "N", 1, 8)
TCP_MODEL = os.environ.get("QUANEDGE_BENCH_TCP_MODEL", "lufft_ws")
SLAVES = [("small_weather_station", u) for u in (1, 2, 3, 4)] + [("vaisala_wxt530", 5), ("vaisala_wxt530", 6),
                                                                    ("lufft_ws", 7), ("lufft_ws", 8)]
_STATS = ("", "_min", "_max", "_avg")
POINTS: dict[str, list[str] | None] = {
    "small_weather_station": None,  # all 12 points, 500..513 in one request
    "vaisala_wxt530": [f"{q}{s}" for q in ("relative_humidity", "air_pressure", "air_temperature", "wind_direction")
                       for s in _STATS] + ["dew_point", "global_radiation"],  # 18 points, 0x0A..0x23
    "lufft_ws": [f"{q}{s}" for q in ("relative_humidity", "air_pressure", "air_temperature") for s in _STATS]
    + ["wind_direction", "dew_point", "precipitation_type"],  # 15 points, 10..35
}


def start_sim(*args: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "quanedge", "sim", "modbus", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def devices(link: ModbusLink, poll_s: float) -> list[PolledDevice]:
    return [PolledDevice(f"{m}-{u}", ModbusDevice(f"{m}-{u}", link, u, load_profile(m)), poll_s, POINTS[m])
            for m, u in SLAVES]


async def run_scheduler(sched: BusScheduler, seconds: float) -> None:
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(seconds)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _nothing(_: list[Reading]) -> None:
    return None


async def bus_utilisation(path: str) -> dict[str, Any]:
    records: list[PollRecord] = []
    async with ModbusLink.rtu(path, LINE, timeout_s=TIMEOUT_S) as link:
        sched = BusScheduler("bench", devices(link, 0.01), _nothing, trace=records.append, turnaround_s=TURNAROUND_S)
        report = sched.capacity_report
        assert report is not None
        t0 = time.monotonic()
        await run_scheduler(sched, RUN_S + 1.0)
    cycle = {d.name: d.cycle_s for d in report.devices}
    start, end = t0 + 1.0, t0 + 1.0 + RUN_S  # the first second is warm-up
    done = [r for r in records if r.ok and r.started >= start and r.ended <= end]
    used = sum(cycle[r.device] for r in done)
    mean_cycle = sum(cycle.values()) / len(cycle)
    return {
        "bus_utilisation": round(used / RUN_S, 3),
        "bus_reads_per_s": round(len(done) / RUN_S, 2),
        "bus_limit_reads_per_s": round(1 / mean_cycle, 2),
        "bus_failed_polls": sum(1 for r in records if not r.ok),
        "bus_points_per_s": round(sum(len(POINTS[n.rsplit("-", 1)[0]] or load_profile(n.rsplit("-", 1)[0]).points)
                                      for n in (r.device for r in done)) / RUN_S, 1),
    }


async def worst_delays(path: str, switch_recovery_s: float | None, silent: bool, control: int) -> float:
    """Worst (start - due) over the polls of slaves 1-7 while slave 8 answers or is silent."""
    await set_fault(control, 8, "silent" if silent else None)
    records: list[PollRecord] = []
    async with ModbusLink.rtu(path, LINE, timeout_s=TIMEOUT_S) as link:
        if switch_recovery_s is not None:
            link.switch_recovery_s = switch_recovery_s
        sched = BusScheduler("bench", devices(link, 1.0), _nothing, trace=records.append)
        t0 = time.monotonic()
        await run_scheduler(sched, RUN_S + 2.0)
    others = [r for r in records if not r.device.endswith("-8") and r.started >= t0 + 2.0]
    return max(r.started - r.due for r in others)


async def silent_slave(path: str, control: int) -> dict[str, Any]:
    out: dict[str, Any] = {"silent_slave_timeout_ms": TIMEOUT_S * 1000}
    for key, switch in (("silent_slave_delay_ms", None), ("silent_slave_delay_ms_every_unit_waits_timeout", TIMEOUT_S)):
        base = await worst_delays(path, switch, False, control)
        with_silent = await worst_delays(path, switch, True, control)
        out[key] = round((with_silent - base) * 1000, 1)
        out[key.replace("delay", "worst_start_delay") + "_healthy_vs_silent"] = [
            round(base * 1000, 1), round(with_silent * 1000, 1)]
    await set_fault(control, 8, None)
    return out


async def serve_tcp(n: int) -> None:
    from drivers.modbus.sim import make_model
    from drivers.modbus.sim_slave import TcpSlaveServer

    servers = [TcpSlaveServer({1: make_model(TCP_MODEL, 1, seed=i)[0]}) for i in range(n)]
    ports = [await s.start() for s in servers]
    print(json.dumps({"tcp_ports": ports}), flush=True)
    await asyncio.Event().wait()


async def tcp_points(ports: list[int]) -> dict[str, Any]:
    count = [0]

    async def emit(rs: list[Reading]) -> None:  # decoded device points only: no rates, no failures
        count[0] += sum(1 for r in rs if r.quality in (Quality.GOOD, Quality.MISSING, Quality.OUT_OF_RANGE)
                        and r.cls is RecordClass.ROUTINE)

    links = [ModbusLink.tcp("127.0.0.1", p, timeout_s=1.0) for p in ports]
    prof = load_profile(TCP_MODEL)
    scheds = [BusScheduler(f"tcp{i}", [PolledDevice(f"dev-{i}", ModbusDevice(f"dev-{i}", link, 1, prof), 0.001)],
                           emit) for i, link in enumerate(links)]
    for link in links:
        await link.open()
    tasks = [asyncio.create_task(s.run()) for s in scheds]
    await asyncio.sleep(1.0)  # warm-up
    c0, t0 = count[0], time.monotonic()
    await asyncio.sleep(RUN_S)
    points, dt = count[0] - c0, time.monotonic() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for link in links:
        await link.close()
    return {"modbus_tcp_points_per_s": round(points / dt), "modbus_tcp_devices": len(ports),
            "modbus_tcp_model": TCP_MODEL, "modbus_tcp_polls_per_s": round(points / dt / len(prof.points))}


def _measure(what: Callable[..., Any], *args: Any) -> Any:
    return asyncio.run(what(*args))


def main() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    if sys.argv[1:2] == ["serve-tcp"]:
        asyncio.run(serve_tcp(int(sys.argv[2])))
        return
    out: dict[str, Any] = {"run_s": RUN_S, "turnaround_ms": TURNAROUND_S * 1000}
    slaves = sum((["--slave", f"{m}:{u}"] for m, u in SLAVES), [])
    sim, info = start_sim(*slaves, "--rtu", "--baudrate", "9600", "--parity", "N", "--control", "0",
                          "--turnaround-ms", str(TURNAROUND_S * 1000))
    try:
        out.update(_measure(bus_utilisation, info["rtu_path"]))
        out.update(_measure(silent_slave, info["rtu_path"], info["control_port"]))
    finally:
        stop(sim)
    tcp = subprocess.Popen([sys.executable, "-m", "bench.bus", "serve-tcp", "50"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert tcp.stdout is not None
        out.update(_measure(tcp_points, json.loads(tcp.stdout.readline())["tcp_ports"]))
    finally:
        stop(tcp)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    out["machine"] = f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
