"""`quanedge sim ntcip`: the simulator's command (options checked here; the simulator
itself, drivers/ntcip/sim.py, is imported only when the command runs)."""

from __future__ import annotations

from typing import Any

import typer

from drivers.sim_support import _check_port, _check_time_factor, _clock, _Control, _fail, _int, _listen, _run, _serve

__all__ = ["command"]


def command(
    port: int = typer.Option(0, "--port", help="UDP port of the SNMP agent (0 = any free; devices use 161)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    community: str = typer.Option("public", help="Read community."),
    write_community: str = typer.Option("private", "--write-community", help="Write (SET) community."),
    pattern: int = typer.Option(1, "--pattern", help="Local (standby) timing pattern: 1, 2 or 3."),
    time_unit: str = typer.Option("s", "--time-unit", help="Pattern cycle/offset unit: s or ds (tenths)."),
    period_s: float = typer.Option(60.0, "--period-s", help="Detector counting period, model seconds."),
    seed: int = typer.Option(0, help="Detector seed (same seed, same counts)."),
    time_factor: float = typer.Option(1.0, "--time-factor", help="Model seconds per wall second."),
    control: int | None = typer.Option(None, "--control", help="Fault-control port (JSON lines; 0 = any free)."),
) -> None:
    """Simulated NTCIP 1202 signal controller: SNMPv1/v2c agent on UDP, 8 phases, 3 patterns.

    Control actions: {"fault": "none|silence|wrong_type"}, {"status": true},
    {"detector": 4, "code": 212} (a fault code instead of the occupancy; "code": null clears it).
    """
    from drivers.ntcip.sim import DEFAULT_PATTERNS, NtcipControllerSim

    _check_port("--port", port)
    _check_port("--control", control)
    known = sorted(p.number for p in DEFAULT_PATTERNS)
    if pattern not in known:
        _fail(f"--pattern must be one of {', '.join(map(str, known))}, got {pattern}")
    if time_unit not in ("s", "ds"):
        _fail(f"--time-unit must be s or ds, got {time_unit!r}")
    if not 1 <= period_s <= 3600:
        _fail(f"--period-s must be 1..3600, got {period_s}")
    if not community or not write_community:
        _fail("--community and --write-community must not be empty")
    _check_time_factor(time_factor)

    async def main(stop: Any) -> None:
        sim = NtcipControllerSim(local_pattern=pattern, community=community, write_community=write_community,
                                 time_unit=time_unit, period_s=period_s, clock=_clock(time_factor), seed=seed)

        def fault(msg: dict) -> dict:
            name = msg["fault"] or "none"
            if name not in ("none", "silence", "wrong_type"):
                raise ValueError(f"unknown fault {name!r}; known: none, silence, wrong_type")
            sim.fault = name
            return {"fault": name}

        def detector(msg: dict) -> dict:
            det = _int(msg, "detector", 1, 8)
            if msg.get("code") is None:
                sim.detector_fault.pop(det, None)
            else:
                sim.detector_fault[det] = _int(msg, "code", 201, 255)
            return {"detector_fault": {str(k): v for k, v in sim.detector_fault.items()}}

        await _listen("--port", lambda: sim.start(host, port))
        ctl = _Control({"fault": fault, "detector": detector},
                       lambda: {"fault": sim.fault, "requests": sim.requests, "pattern": sim.pattern,
                                "command": sim.command, "sets": len(sim.sets)})
        info = {"device": "ntcip1202", "host": host, "udp_port": sim.port, "community": community,
                "write_community": write_community, "pattern": pattern, "time_unit": time_unit, "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop)

    _run(main)
