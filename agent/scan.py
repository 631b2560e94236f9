"""`quanedge scan`: find the Modbus slaves on an RS-485 line and print a ready-to-paste config.

How it spends its time budget (default 240 s; a full sweep of 248 units takes about 2.5 minutes at
9600 baud, most of it the paced retries below; narrow --units to go faster):
1. Find the line. All slaves on one bus share baud and parity, so one answer settles it: at each
   line setting, most likely first (the factory defaults devices.md lists: 9600 8N1, 4800 8N1,
   19200 8E1, ...), probe the usual factory addresses (1, 0xC0, 255, 2, 3). Any reply counts, even
   an exception: a slave at the wrong baud sees garbage and stays silent. If none answers, sweep
   every address at each setting while the budget lasts.
2. Sweep every address (1..247 and 255) at that setting with one short read each. The probe timeout
   covers the wire time at that baud plus a 50 ms slave turnaround, so slow lines are not missed.
3. Identify each slave from several of its registers (agent.identify: high / medium / low
   confidence, or unknown when the evidence is thin or contradicts itself).
4. Print a TOML [[bus]] and one [[device]] per slave (unknown ones commented out), with a
   capacity check of the suggested poll interval.

Pacing. Some RS-485 slaves stay deaf for about 0.4 s after any frame addressed to another unit
(a third-party slave in the field: found at a factory address, then silent to identification,
which followed the sweep's frames to other units at once). So an unanswered query is asked once
more after the line has carried nothing for another unit for `pace_s` (0.5 s; devices.md: Vaisala
recommends retrying an unanswered query), and identification starts only after that quiet too.
A silent unit so costs two probe timeouts and the pace; `--pace-ms 0` turns both off (a fast scan
for buses known to be well behaved). Units that answered only when asked again are noted in the
printed config: poll such a slave alone on its bus, or expect timeouts after other units' frames.

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
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import typer

from agent.identify import IDENTIFY_MAX_REGISTERS, Identification, identify
from core.errors import DeviceException, DeviceTimeout, DriverError, FrameError, LinkError, QuanedgeError
from drivers.modbus.codec import plan_reads
from drivers.modbus.profile import load_profile
from drivers.modbus.timing import DeviceLoad, LineTiming, capacity_report

__all__ = ["DEFAULT_LINES", "PACE_S", "Identification", "ScanResult", "identify", "parse_units", "render_toml",
           "scan", "scan_bus"]

DEFAULT_LINES: tuple[LineTiming, ...] = tuple(LineTiming(b, p) for b, p in (
    (9600, "N"), (4800, "N"), (19200, "E"), (19200, "N"), (9600, "E"), (2400, "N"), (38400, "N"),
    (115200, "N"), (4800, "E"), (9600, "O"), (19200, "O"), (57600, "N")))
FACTORY_UNITS = (1, 0xC0, 255, 2, 3)
SLOW_TURNAROUND_S = 0.05  # devices.md: slaves answer within 5-50 ms
PACE_S = 0.5  # quiet after another unit's frame before asking again: ~0.4 s deaf slaves, plus a margin
DEFAULT_BUDGET_S = 240.0


class _OutOfTime(Exception):
    pass


@dataclass
class ScanResult:
    port: str
    line: LineTiming | None
    slaves: list[Identification] = field(default_factory=list)
    elapsed_s: float = 0.0
    probes: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)
    retries: int = 0  # unanswered queries asked again after the pace
    paced: set[int] = field(default_factory=set)  # units that answered only when asked again


@dataclass
class _Line:
    """Who the line last carried a frame for, and when: shared by every prober of one scan."""

    unit: int | None = None
    end: float = 0.0        # when the last exchange (reply or timeout) ended
    other_end: float = 0.0  # when the last exchange with a unit other than `unit` ended


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

    def __init__(self, port: str, line: LineTiming, timeout_s: float, deadline: float, result: ScanResult,
                 pace_s: float, clock: _Line) -> None:
        from drivers.modbus.driver import ModbusLink

        self.line, self.deadline, self.result = line, deadline, result
        self.pace_s, self.clock = pace_s, clock
        self.timeout_s = max(timeout_s, line.timeout_floor_s(1, SLOW_TURNAROUND_S))
        self.link = ModbusLink.rtu(port, baudrate=line.baudrate, parity=line.parity, stopbits=line.stopbits,
                                   bytesize=line.bytesize, timeout_s=self.timeout_s, recovery_s=2 * line.t35_s)

    async def read(self, function: int, address: int, count: int, unit: int) -> list[int] | DriverError:
        """One request, asked once."""
        if time.monotonic() + self.timeout_s > self.deadline:
            raise _OutOfTime
        line = self.clock
        if unit != line.unit:
            line.other_end, line.unit = line.end, unit
        self.result.probes += 1
        try:
            return await self.link.read_registers(function, address, count, unit)
        except LinkError:
            raise
        except DriverError as exc:
            return exc
        finally:
            line.end = time.monotonic()
            await asyncio.sleep(self.line.t35_s)  # the line stays quiet t3.5 before the next request

    async def quiet(self, unit: int) -> None:
        """Wait until the line has carried nothing for a unit other than `unit` for pace_s."""
        line = self.clock
        since = line.end if unit != line.unit else line.other_end
        wait = since + self.pace_s - time.monotonic()
        if wait > 0:
            if time.monotonic() + wait + self.timeout_s > self.deadline:
                raise _OutOfTime
            await asyncio.sleep(wait)

    async def ask(self, function: int, address: int, count: int, unit: int) -> list[int] | DriverError:
        """A read; if it meets silence, asked once more after pace_s of quiet (pace 0: never)."""
        reply = await self.read(function, address, count, unit)
        if not isinstance(reply, DeviceTimeout) or self.pace_s <= 0:
            return reply
        await self.quiet(unit)
        self.result.retries += 1
        reply = await self.read(function, address, count, unit)
        if not isinstance(reply, DeviceTimeout):  # it answered this time (an exception is an answer)
            self.result.paced.add(unit)
        return reply

    async def present(self, unit: int) -> bool | None:
        """True: it answers (even with an exception); False: silence; None: garbled frames."""
        reply = await self.ask(3, 0, 1, unit)
        if isinstance(reply, FrameError):
            return None
        return not isinstance(reply, DriverError) or isinstance(reply, DeviceException)


async def scan_bus(
    port: str, *, lines: Sequence[LineTiming] = DEFAULT_LINES, units: Sequence[int] = tuple(range(1, 248)) + (255,),
    budget_s: float = DEFAULT_BUDGET_S, probe_timeout_s: float = 0.05, pace_s: float = PACE_S,
    progress: Callable[[str], None] | None = None,
) -> ScanResult:
    """Find the line, sweep the units, identify them; stops when the budget is spent."""
    if not lines or not units:
        raise ValueError("scan needs at least one line setting and one unit")
    if not isinstance(pace_s, (int, float)) or not 0 <= pace_s <= 5:
        raise ValueError(f"pace must be 0..5 seconds, got {pace_s!r}")
    clock = _Line()

    def opened(line: LineTiming, timeout_s: float) -> AbstractAsyncContextManager[_Prober]:
        return _open(_Prober(port, line, timeout_s, deadline, result, pace_s, clock))

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
                async with opened(line, probe_timeout_s) as p:
                    for u in pass_units:
                        if await p.present(u):
                            result.line, found = line, {u}
                            break
        if result.line is None:
            result.notes.append("no slave answered at any line setting tried")
            return result
        say(f"line is {result.line}; sweeping {len(units)} units")
        garbled: list[int] = []
        async with opened(result.line, probe_timeout_s) as p:
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
        async with opened(result.line, ident_timeout) as p:
            for u in sorted(found):
                await p.quiet(u)  # a slave deaf after the sweep's frames to other units hears this
                result.slaves.append(await identify(p.ask, u))
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
async def _open(prober: _Prober) -> AsyncIterator[_Prober]:
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
           f"({result.probes} probes, {result.retries} paced retries){'' if result.complete else ' - INCOMPLETE'}",
           "# confidence: high = identity register and map fit one model; medium = register map and values fit",
           "# one model and agree; low = plausible values only (check the label); none = unknown device"]
    out += [f"# note: {n}" for n in result.notes]
    if result.paced:
        out.append(f"# note: unit(s) {', '.join(map(str, sorted(result.paced)))} answered only when asked again "
                   "after quiet on the line: a slave that stays deaf after frames to other units, or a lost frame; "
                   "poll it alone on its bus, or expect timeouts right after other units' polls")
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
            loads.append(DeviceLoad(f"unit {s.unit}", poll_s, tuple(b.count for b in _blocks(s.profile))))
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
    budget: float = typer.Option(DEFAULT_BUDGET_S, "--budget", min=1, help="Time budget in seconds."),
    baud: list[int] = typer.Option([], "--baud", help="Only these bauds (repeat); default: the usual ones."),
    parity: list[str] = typer.Option([], "--parity", help="Only these parities N/E/O (repeat)."),
    units: str = typer.Option("1-247,255", "--units", help="Unit ids to sweep, e.g. '1-20,192'."),
    probe_timeout_ms: int = typer.Option(50, "--probe-timeout-ms", min=5, max=2000,
                                         help="Shortest probe timeout (raised to the wire time at slow bauds)."),
    pace_ms: int = typer.Option(round(PACE_S * 1000), "--pace-ms", min=0, max=5000,
                                help="Quiet after another unit's frame before an unanswered query is asked again "
                                     "(slaves deaf after foreign frames); 0 = no retries, a fast scan."),
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
                                      probe_timeout_s=probe_timeout_ms / 1000.0, pace_s=pace_ms / 1000.0,
                                      progress=lambda m: print(m, file=sys.stderr, flush=True)))
    except (ValueError, QuanedgeError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(render_toml(result, bus_name=bus_name, poll_s=poll_s), nl=False)
    if result.line is None:
        raise typer.Exit(1)
