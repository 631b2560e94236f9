"""`quanedge scan`: find the Modbus slaves on an RS-485 line and print a ready-to-paste config.

How it spends its time budget (default 60 s):
1. Find the line. All slaves on one bus share baud and parity, so one answer settles it: at each
   line setting, most likely first (the factory defaults devices.md lists: 9600 8N1, 4800 8N1,
   19200 8E1, ...), probe the usual factory addresses (1, 0xC0, 255, 2, 3). Any reply counts, even
   an exception: a slave at the wrong baud sees garbage and stays silent. If none answers, sweep
   every address at each setting while the budget lasts.
2. Sweep every address (1..247 and 255) at that setting with one short read each. The probe timeout
   covers the wire time at that baud plus a 50 ms slave turnaround, so slow lines are not missed.
3. Identify each slave from its registers, and say how sure that is:
       high    an identity register matched (WXT530 model register 0x0000; SEN0575 PID/VID;
               a Lufft type code that no other model uses)
       medium  the register map and its values fit one model (e.g. 0x0000 sector agrees with
               0x0001 degrees and 0x07D0 holds the unit's own address)
       low     plausible values only: another device could look the same; check the label
       none    it answers but is no model we know
4. Print a TOML [[bus]] and one [[device]] per slave (unknown ones commented out), with a
   capacity check of the suggested poll interval.

Line settings the port refuses are skipped with a note. Through pyserial a Linux pty (the
simulators) refuses any parity (the kernel clears PARENB and pyserial's second tcsetattr then fails
with EINVAL), so on a pty a slave set to 8E1 is found at 8N1; on a real adapter 8E1 is tried first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import typer

from agent.bus_timing import DeviceLoad, LineTiming, capacity_report
from agent.errors import DeviceException, DriverError, FrameError, LinkError, QuanedgeError
from agent.reading import Quality
from drivers.codec import REGISTER_COUNT, decode_point, plan_reads
from drivers.profile import load_profile

__all__ = ["DEFAULT_LINES", "Identification", "ScanResult", "identify", "parse_units", "render_toml", "scan",
           "scan_bus"]

DEFAULT_LINES: tuple[LineTiming, ...] = tuple(LineTiming(b, p) for b, p in (
    (9600, "N"), (4800, "N"), (19200, "E"), (19200, "N"), (9600, "E"), (2400, "N"), (38400, "N"),
    (115200, "N"), (4800, "E"), (9600, "O"), (19200, "O"), (57600, "N")))
FACTORY_UNITS = (1, 0xC0, 255, 2, 3)
SLOW_TURNAROUND_S = 0.05  # devices.md: slaves answer within 5-50 ms
IDENTIFY_MAX_REGISTERS = 26  # the longest read identify() makes (WXT530 0x000A-0x0023)
LUFFT_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 16, 23, 25, 33, 35, 43, 45, 93, 95}
_ONLY_LUFFT = LUFFT_CODES - set(range(1, 7))


class _OutOfTime(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Identification:
    unit: int
    profile: str | None
    confidence: str  # high | medium | low | none
    evidence: str


@dataclass
class ScanResult:
    port: str
    line: LineTiming | None
    slaves: list[Identification] = field(default_factory=list)
    elapsed_s: float = 0.0
    probes: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


def parse_units(text: str) -> list[int]:
    """'1-247,255' -> [1, ..., 247, 255]; raises ValueError naming the bad part."""
    out: list[int] = []
    for part in text.split(","):
        lo_s, _, hi_s = part.strip().partition("-")
        if not lo_s.isdigit() or (hi_s and not hi_s.isdigit()):
            raise ValueError(f"bad unit range {part!r}; expected e.g. '1-247,255'")
        lo, hi = int(lo_s), int(hi_s or lo_s)
        if not 1 <= lo <= hi <= 255:
            raise ValueError(f"bad unit range {part!r}; units are 1..255")
        out += [u for u in range(lo, hi + 1) if u not in out]
    return out


class _Prober:
    """One line setting on the port; every read counts against the scan's deadline."""

    def __init__(self, port: str, line: LineTiming, timeout_s: float, deadline: float, result: ScanResult) -> None:
        from drivers.modbus import ModbusLink

        self.line, self.deadline, self.result = line, deadline, result
        self.timeout_s = max(timeout_s, line.timeout_floor_s(1, SLOW_TURNAROUND_S))
        self.link = ModbusLink.rtu(port, baudrate=line.baudrate, parity=line.parity, stopbits=line.stopbits,
                                   bytesize=line.bytesize, timeout_s=self.timeout_s, recovery_s=2 * line.t35_s)

    async def read(self, function: int, address: int, count: int, unit: int) -> list[int] | DriverError:
        if time.monotonic() + self.timeout_s > self.deadline:
            raise _OutOfTime
        self.result.probes += 1
        try:
            return await self.link.read_registers(function, address, count, unit)
        except LinkError:
            raise
        except DriverError as exc:
            return exc
        finally:
            await asyncio.sleep(self.line.t35_s)  # the line stays quiet t3.5 before the next request

    async def present(self, unit: int) -> bool | None:
        """True: it answers (even with an exception); False: silence; None: garbled frames."""
        reply = await self.read(3, 0, 1, unit)
        if isinstance(reply, FrameError):
            return None
        return not isinstance(reply, DriverError) or isinstance(reply, DeviceException)


def _fits(profile_name: str, function: int, start: int, regs: list[int]) -> tuple[int, int]:
    """(good points, out-of-range points) of a profile's points that lie inside these registers."""
    good = bad = 0
    for p in load_profile(profile_name).points:
        end = p.address + REGISTER_COUNT[p.type]
        if p.function == function and start <= p.address and end <= start + len(regs):
            _, q = decode_point(p, regs[p.address - start:end - start])
            good += q == Quality.GOOD
            bad += q == Quality.OUT_OF_RANGE
    return good, bad


async def identify(p: _Prober, unit: int) -> Identification:
    """Which model is at `unit`? Reads only what it needs, most specific model first."""
    def ok(r: object) -> bool:
        return isinstance(r, list)

    ident = await p.read(4, 0x0000, 1, unit)
    if ok(ident):
        hi, lo = ident[0] >> 8, ident[0] & 0xFF  # type: ignore[index]
        ids = await p.read(4, 0x0000, 3, unit)
        if ok(ids) and ids[0] == 0x00C0 and ((ids[1] & 0xC000) << 2 | ids[0]) == 0x100C0 and ids[1] & 0x3FFF == 0x3343:  # type: ignore[index]
            extra = " and register 2 holds its own address" if ids[2] == unit else ""  # type: ignore[index]
            return Identification(unit, "dfrobot_sen0575", "high",
                                  f"input registers 0-1 = PID 0x100C0 / VID 0x3343 (SEN0575){extra}")
        rain = await p.read(4, 48, 3, unit)
        if ok(rain) and hi in LUFFT_CODES:
            sure = "high" if hi in _ONLY_LUFFT else "medium"
            return Identification(unit, "lufft_ws", sure, f"identification 0x{ident[0]:04X} is Lufft WS type code "  # type: ignore[index]
                                  f"{hi}, software {lo}; rain registers 48-50 answer (a WXT530 has none)")
        if 1 <= hi <= 6:
            block = await p.read(4, 0x000A, 26, unit)
            good, bad = _fits("vaisala_wxt530", 4, 0x000A, block) if ok(block) else (0, 1)  # type: ignore[arg-type]
            if not bad:
                return Identification(unit, "vaisala_wxt530", "high", f"model register 0x0000 = 0x{ident[0]:04X}: "  # type: ignore[index]
                                      f"WXT53{hi}, software {lo}; {good} values in 0x000A-0x0023 plausible")
    station = await p.read(3, 500, 14, unit)
    if ok(station):
        good, bad = _fits("small_weather_station", 3, 500, station)  # type: ignore[arg-type]
        if good >= 8 and not bad:
            return Identification(unit, "small_weather_station", "medium",
                                  f"holding registers 500-513 answer with {good} plausible weather values")
    six = await p.read(3, 0, 11, unit)
    if ok(six):
        good, bad = _fits("outdoor_six_gas", 3, 0, six)  # type: ignore[arg-type]
        if good >= 6 and not bad and six[7] <= six[8]:  # type: ignore[index]
            return Identification(unit, "outdoor_six_gas", "low", "holding registers 0-10 answer; 3-10 hold plausible "
                                  "SO2/NO2/CO/O3/PM/temperature/humidity values (PM2.5 <= PM10): check the label")
    pm = await p.read(3, 0, 10, unit)
    if ok(pm):
        good, bad = _fits("pm_transmitter", 3, 0, pm)  # type: ignore[arg-type]
        if good == 2 and not bad and pm[4] <= pm[9]:  # type: ignore[index]
            return Identification(unit, "pm_transmitter", "low", "holding registers 0-9 answer (10 does not); "
                                  f"PM2.5 {pm[4]} <= PM10 {pm[9]} ug/m3 plausible: check the label")  # type: ignore[index]
    own = await p.read(3, 0x07D0, 1, unit)
    addressed = ok(own) and own[0] == unit  # type: ignore[index]
    why = "; 0x07D0 holds its own address (Renke-style)" if addressed else ""
    pair = await p.read(3, 0x0000, 2, unit)
    if ok(pair) and pair[0] <= 7 and pair[1] < 360 and (round(pair[1] / 45) % 8 - pair[0]) % 8 in (0, 1, 7):  # type: ignore[index]
        return Identification(unit, "renke_wind_direction", "medium" if addressed else "low",
                              f"0x0000 sector {pair[0]} agrees with 0x0001 = {pair[1]} deg{why}")  # type: ignore[index]
    one = await p.read(3, 0x0000, 1, unit)
    if ok(one) and one[0] <= 700:  # type: ignore[index]
        return Identification(unit, "renke_wind_speed", "medium" if addressed else "low",
                              f"one holding register 0x0000 = {one[0]} ({one[0] / 10:g} m/s plausible){why}")  # type: ignore[index]
    return Identification(unit, None, "none", "answers, but its registers fit no known profile")


async def scan_bus(
    port: str, *, lines: Sequence[LineTiming] = DEFAULT_LINES, units: Sequence[int] = tuple(range(1, 248)) + (255,),
    budget_s: float = 60.0, probe_timeout_s: float = 0.05, progress: Callable[[str], None] | None = None,
) -> ScanResult:
    """Find the line, sweep the units, identify them; stops when the budget is spent."""
    if not lines or not units:
        raise ValueError("scan needs at least one line setting and one unit")
    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    result = ScanResult(port, None)
    deadline = t0 + budget_s
    found: set[int] = set()
    try:
        if "://" not in port and not os.path.exists(port):
            raise LinkError(f"cannot open {port}: no such serial port")
        usable = []
        for line in lines:
            refused = _port_refuses(port, line)
            if refused:
                result.notes.append(f"the port refused {line} ({refused}); not scanned at that setting")
                say(result.notes[-1])
            else:
                usable.append(line)
        first = [u for u in FACTORY_UNITS if u in units]
        for pass_units in (first, list(units)) if first else (list(units),):
            for line in usable:
                if result.line is not None:
                    break
                say(f"trying {line} (units {pass_units[0]}..{pass_units[-1]})")
                async with _open(port, line, probe_timeout_s, deadline, result) as p:
                    for u in pass_units:
                        if await p.present(u):
                            result.line, found = line, {u}
                            break
        if result.line is None:
            result.notes.append("no slave answered at any line setting tried")
            return result
        say(f"line is {result.line}; sweeping {len(units)} units")
        garbled: list[int] = []
        async with _open(port, result.line, probe_timeout_s, deadline, result) as p:
            for u in units:
                if u in found:
                    continue
                answer = await p.present(u)
                if answer:
                    found.add(u)
                elif answer is None:
                    garbled.append(u)
        result.slaves += [Identification(u, None, "none", "answers with garbled frames: two slaves sharing this "
                                         "address (factory defaults collide) or a noisy line; give each a "
                                         "unique address") for u in garbled]
        # identification reads up to 26 registers: wait for their longer replies
        ident_timeout = result.line.timeout_floor_s(IDENTIFY_MAX_REGISTERS, SLOW_TURNAROUND_S)
        async with _open(port, result.line, ident_timeout, deadline, result) as p:
            for u in sorted(found):
                result.slaves.append(await identify(p, u))
                say(f"unit {u}: {result.slaves[-1].profile} ({result.slaves[-1].confidence})")
        result.slaves.sort(key=lambda s: s.unit)
    except _OutOfTime:
        result.complete = False
        result.notes.append(f"time budget of {budget_s:g} s spent after {result.probes} probes: "
                            "the sweep is incomplete")
        done = {s.unit for s in result.slaves}
        result.slaves += [Identification(u, None, "none", "found, not identified before the budget ran out")
                          for u in sorted(found - done)]
    finally:
        result.elapsed_s = time.monotonic() - t0
    return result


def _port_refuses(port: str, line: LineTiming) -> str | None:
    """Why the port cannot be set to this line, or None. Checked with a plain pyserial open first,
    because a refused setting inside pymodbus leaves the port open and locked (pymodbus 3.16.1 /
    pyserial 3.5 reconfigure twice on open). Linux ptys refuse parity this way (the kernel clears
    PARENB and the second tcsetattr fails with EINVAL); real adapters may refuse some bauds."""
    import serial

    try:
        for _ in range(2):  # the second open starts from the state the first left, as pymodbus's will
            with serial.Serial(port, line.baudrate, bytesize=line.bytesize, parity=line.parity,
                               stopbits=line.stopbits, timeout=0, exclusive=True) as ser:
                ser.write_timeout = 0  # the second reconfigure, as pymodbus makes it
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        return str(exc)
    return None


@asynccontextmanager
async def _open(port: str, line: LineTiming, timeout_s: float, deadline: float,
                result: ScanResult) -> AsyncIterator[_Prober]:
    prober = _Prober(port, line, timeout_s, deadline, result)
    try:
        await prober.link.open()
        yield prober
    finally:
        await prober.link.close()


def render_toml(result: ScanResult, *, bus_name: str = "rs485-1", poll_s: float = 10.0) -> str:
    """The [[bus]] and [[device]] sections for a box config, with what was found as comments."""
    if result.line is None:
        return f"# quanedge scan {result.port}: no Modbus slave found ({'; '.join(result.notes)})\n"
    ln = result.line
    known = [s for s in result.slaves if s.profile is not None]
    biggest = max((b.count for s in known for b in _blocks(s.profile)), default=1)  # type: ignore[arg-type]
    timeout_ms = max(100, math.ceil(ln.timeout_floor_s(biggest, SLOW_TURNAROUND_S) * 1500))
    out = [f"# quanedge scan {result.port}: {ln}, {len(result.slaves)} slave(s) in {result.elapsed_s:.1f} s "
           f"({result.probes} probes){'' if result.complete else ' - INCOMPLETE'}",
           "# confidence: high = identity register matched; medium = register map and values fit one model;",
           "# low = plausible values only (check the label); none = unknown device"]
    out += [f"# note: {n}" for n in result.notes]
    out += ["", "[[bus]]", f'name = "{bus_name}"', 'kind = "rtu"', f'port = "{result.port}"',
            f"baudrate = {ln.baudrate}", f'parity = "{ln.parity}"', f"stopbits = {ln.stopbits}",
            f"bytesize = {ln.bytesize}", f"timeout_ms = {timeout_ms}"]
    loads = []
    for s in result.slaves:
        out.append("")
        out.append(f"# unit {s.unit}: {s.profile or 'unknown device'}, {s.confidence} confidence: {s.evidence}")
        lines = ["[[device]]", f'name = "{(s.profile or "unknown").replace("_", "-")}-{s.unit}"', f'bus = "{bus_name}"',
                 f'profile = "{s.profile or "?"}"', f"unit = {s.unit}", f"poll_s = {poll_s:g}"]
        if s.profile is None or s.unit > 247:
            if s.unit > 247:
                out.append(f"# unit {s.unit} is outside the RTU range 1..247: give it a unique address first")
            out += ["# " + x for x in lines]
        else:
            out += lines
            loads.append(DeviceLoad(f"unit {s.unit}", poll_s, tuple(b.count for b in _blocks(s.profile))))  # type: ignore[arg-type]
    if loads:
        rep = capacity_report(bus_name, ln, loads)
        out += ["", f"# capacity: polling these every {poll_s:g} s takes {rep.demand:.1%} of the bus at {ln} "
                f"(20 ms turnaround){'; OVER-SUBSCRIBED, raise poll_s' if rep.oversubscribed else ''}"]
    return "\n".join(out) + "\n"


def _blocks(profile: str) -> list:
    prof = load_profile(profile)
    return plan_reads(prof.points, prof.max_registers_per_read, prof.max_read_gap)


def scan(
    port: str = typer.Option(..., "--port", help="Serial port of the RS-485 adapter (or a pty)."),
    budget: float = typer.Option(60.0, "--budget", min=1, help="Time budget in seconds."),
    baud: list[int] = typer.Option([], "--baud", help="Only these bauds (repeat); default: the usual ones."),
    parity: list[str] = typer.Option([], "--parity", help="Only these parities N/E/O (repeat)."),
    units: str = typer.Option("1-247,255", "--units", help="Unit ids to sweep, e.g. '1-20,192'."),
    probe_timeout_ms: int = typer.Option(50, "--probe-timeout-ms", min=5, max=2000,
                                         help="Shortest probe timeout (raised to the wire time at slow bauds)."),
    bus_name: str = typer.Option("rs485-1", "--bus-name", help="Name of the printed bus section."),
    poll_s: float = typer.Option(10.0, "--poll-s", min=0.01, help="poll_s for the printed devices."),
) -> None:
    """Find the Modbus slaves on a bus and print ready-to-paste bus and device sections for the box config."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # every silent unit would log an ERROR
    try:
        unit_list = parse_units(units)
        parities = [p.upper() for p in parity] or ["N", "E", "O"]
        lines = [ln for ln in DEFAULT_LINES if (not baud or ln.baudrate in baud) and ln.parity in parities]
        lines += [LineTiming(b, p) for b in baud for p in parities if LineTiming(b, p) not in lines]
        result = asyncio.run(scan_bus(port, lines=lines, units=unit_list, budget_s=budget,
                                      probe_timeout_s=probe_timeout_ms / 1000.0,
                                      progress=lambda m: print(m, file=sys.stderr, flush=True)))
    except (ValueError, QuanedgeError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    typer.echo(render_toml(result, bus_name=bus_name, poll_s=poll_s), nl=False)
    if result.line is None:
        raise typer.Exit(1)
