"""`quanedge sim wxt-serial`: the simulator's command (options checked here; the simulator
itself, drivers/wxt_serial/sim.py, is imported only when the command runs)."""

from __future__ import annotations

from typing import Any

import typer

from drivers.sim_support import _check_port, _check_time_factor, _clock, _Control, _enum_fault, _fail, _run, _serve

__all__ = ["command"]


def command(
    mode: str = typer.Option("ascii", "--mode", help="ascii (composite 0R0 replies) or nmea (XDR/MWV sentences)."),
    address: str = typer.Option("0", "--address", help="Device address, one character 0-9/A-Z/a-z."),
    baudrate: int | None = typer.Option(None, "--baudrate",
                                           help="Line speed (default: 19200 for ascii, 4800 for nmea)."),
    turnaround_ms: float = typer.Option(20.0, "--turnaround-ms", help="Reply delay after a command."),
    seed: int = typer.Option(0, help="Weather seed (same seed, same weather)."),
    time_factor: float = typer.Option(1.0, "--time-factor", help="Model seconds per wall second."),
    control: int | None = typer.Option(None, "--control", help="Fault-control port (JSON lines; 0 = any free)."),
    host: str = typer.Option("127.0.0.1", help="Address the control port listens on."),
) -> None:
    """Simulated Vaisala WXT530 in ASCII or NMEA mode on a new pty (its path is printed).

    Control actions: {"fault": "none|silence|garbage|corrupt_fields|bad_checksum"}, {"status": true}.
    """
    from drivers.wxt_serial.sim import _SPEEDS, Fault, WxtSerialSim

    if mode not in ("ascii", "nmea"):
        _fail(f"--mode must be ascii or nmea, got {mode!r}")
    if len(address) != 1 or not address.isalnum() or not address.isascii():
        _fail(f"--address must be one character 0-9/A-Z/a-z, got {address!r}")
    if baudrate is not None and baudrate not in _SPEEDS.values():
        _fail(f"--baudrate must be one of {', '.join(map(str, sorted(_SPEEDS.values())))}, got {baudrate}")
    if not 0 <= turnaround_ms <= 5000:
        _fail(f"--turnaround-ms must be 0..5000, got {turnaround_ms}")
    _check_time_factor(time_factor)
    _check_port("--control", control)

    async def main(stop: Any) -> None:
        sim = WxtSerialSim(address=address, protocol=mode, baudrate=baudrate, clock=_clock(time_factor),
                           turnaround_s=turnaround_ms / 1000, seed=seed)
        await sim.start()
        ctl = _Control({"fault": _enum_fault(Fault, lambda f: setattr(sim, "fault", f))},
                       lambda: {"fault": sim.fault.value, "requests": len(sim.requests),
                                "polled_mode": sim.polled_mode})
        info = {"device": "wxt530", "protocol": mode, "pty": sim.port, "address": address,
                "line": f"{sim.baudrate} 8N1", "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop)

    _run(main)
