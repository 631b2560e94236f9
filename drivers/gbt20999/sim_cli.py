"""`quanedge sim gbt20999`: the simulator's command (options checked here; the simulator
itself, drivers/gbt20999/sim.py, is imported only when the command runs)."""

from __future__ import annotations

from typing import Any

import typer

from drivers.sim_support import (
    _check_port,
    _check_time_factor,
    _clock,
    _Control,
    _enum_fault,
    _fail,
    _listen,
    _run,
    _serve,
)

__all__ = ["command"]


def command(
    port: int = typer.Option(0, "--port", help="TCP port (0 = any free)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    controller: int = typer.Option(1, "--controller", help="Controller id (0-65535) in every frame."),
    road: int = typer.Option(1, "--road", help="Road/intersection id (0-255)."),
    plan: int = typer.Option(1, "--plan", help="Plan running at start: 1, 2 or 3."),
    mode: str = typer.Option("local_fixed_cycle", "--mode", help="Run mode at start, by name or number (0x21)."),
    heartbeat_s: float = typer.Option(0.0, "--heartbeat-s", help="Controller heartbeat interval (0 = none)."),
    period_s: float = typer.Option(60.0, "--period-s", help="Detector statistics period, model seconds."),
    seed: int = typer.Option(0, help="Detector seed (same seed, same counts)."),
    time_factor: float = typer.Option(1.0, "--time-factor", help="Model seconds per wall second."),
    control: int | None = typer.Option(None, "--control", help="Fault-control port (JSON lines; 0 = any free)."),
) -> None:
    """Simulated GB/T 20999-2017 signal controller on TCP: stages in real time, plans, detectors.

    Control actions: {"fault": "none|silence|bad_crc|garbage"}, {"drop_connections": true}, {"status": true}.
    """
    from drivers.gbt20999 import codec as g
    from drivers.gbt20999.sim import DEFAULT_PLANS, Fault, GbtControllerSim

    _check_port("--port", port)
    _check_port("--control", control)
    if not 0 <= controller <= 65535:
        _fail(f"--controller must be 0..65535, got {controller}")
    if not 0 <= road <= 255:
        _fail(f"--road must be 0..255, got {road}")
    plans = sorted(p.number for p in DEFAULT_PLANS)
    if plan not in plans:
        _fail(f"--plan must be one of {', '.join(map(str, plans))}, got {plan}")
    by_name = {name: code for code, name in g.MODES.items()}
    try:
        mode_code = by_name[mode] if mode in by_name else int(mode, 0)
    except ValueError:
        mode_code = -1
    if mode_code not in g.MODES:
        _fail(f"--mode must be one of {', '.join(by_name)} (or its number), got {mode!r}")
    if not 0 <= heartbeat_s <= 3600:
        _fail(f"--heartbeat-s must be 0..3600 (0 = none), got {heartbeat_s}")
    if not 1 <= period_s <= 3600:
        _fail(f"--period-s must be 1..3600, got {period_s}")
    _check_time_factor(time_factor)

    async def main(stop: Any) -> None:
        sim = GbtControllerSim(controller=controller, road=road, plan=plan, mode=mode_code, period_s=period_s,
                               heartbeat_s=heartbeat_s or None, clock=_clock(time_factor), seed=seed)

        def drop(msg: dict) -> dict:
            sim.drop_connections()
            return {}

        await _listen("--port", lambda: sim.start(host, port))
        ctl = _Control({"fault": _enum_fault(Fault, lambda f: setattr(sim, "fault", f)), "drop_connections": drop},
                       lambda: {"fault": sim.fault.value, "frames_in": len(sim.frames_in), "plan": sim.plan,
                                "mode": g.MODES.get(sim.mode, sim.mode), "stage": sim.stage_at(sim.clock())})
        info = {"device": "gbt20999", "host": host, "tcp_port": sim.port, "controller": controller, "road": road,
                "plan": plan, "mode": g.MODES[mode_code], "seed": seed}
        await _serve(ctl, host, control, info, stop, sim.stop)

    _run(main)
