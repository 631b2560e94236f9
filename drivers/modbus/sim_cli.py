"""`quanedge sim wxt530` and `quanedge sim modbus`: simulated Modbus slaves on RTU ptys and TCP
(options checked here; the simulators are imported only when a command runs)."""

from __future__ import annotations

import contextlib
import json

import typer

from drivers.sim_support import _fail

__all__ = ["modbus_command", "wxt530_command"]


def wxt530_command(
    tcp: int | None = typer.Option(None, "--tcp", help="Serve Modbus TCP on this port (0 = any free)."),
    rtu: bool = typer.Option(False, "--rtu", help="Serve Modbus RTU on a new pty (its path is printed)."),
    unit: list[int] = typer.Option([1], "--unit", help="Slave id(s) to answer as; repeat for several."),
    baudrate: int = typer.Option(19200), parity: str = typer.Option("N"),
    seed: int = typer.Option(0, help="Weather seed (same seed, same weather)."),
    control: int | None = typer.Option(None, "--control", help="Fault-control port (JSON lines)."),
) -> None:
    """Simulated Vaisala WXT530 (Modbus RTU/TCP) with faults on demand. Prints one JSON line when ready."""
    import asyncio

    from drivers.modbus.sim_wxt530 import serve_wxt530

    if tcp is None and not rtu:
        _fail("give --tcp PORT and/or --rtu")

    def ready(info: dict) -> None:
        print(json.dumps(info), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_wxt530(tcp_port=tcp, rtu=rtu, units=tuple(unit), baudrate=baudrate, parity=parity,
                                 seed=seed, control_port=control, on_ready=ready))

def modbus_command(
    model: str | None = typer.Option(None, "--model", help="Device model (a profile name), e.g. lufft_ws."),
    unit: list[int] = typer.Option([], "--unit", help="Slave id(s) for --model; default: the profile's."),
    slave: list[str] = typer.Option([], "--slave", help="MODEL:UNIT, repeat to mix models on one bus."),
    tcp: int | None = typer.Option(None, "--tcp", help="Serve Modbus TCP on this port (0 = any free)."),
    rtu: bool = typer.Option(False, "--rtu", help="Serve Modbus RTU on a new pty (its path is printed)."),
    baudrate: int | None = typer.Option(None, help="Line speed (default: the first model's)."),
    parity: str | None = typer.Option(None, help="N, E or O (default: the first model's)."),
    turnaround_ms: float = typer.Option(10.0, "--turnaround-ms", help="Slave reply delay on RTU."),
    seed: int = typer.Option(0, help="Physics seed (same seed, same weather and air)."),
    time_factor: float = typer.Option(1.0, "--time-factor", help="Model seconds per wall second."),
    control: int | None = typer.Option(None, "--control", help="Fault-control port (JSON lines)."),
) -> None:
    """Simulated Modbus devices (every shipped profile) on one bus, faults on demand. Prints one JSON line."""
    import asyncio

    from drivers.modbus.sim import MODELS, parse_slaves, serve_models

    specs = list(slave)
    if model is not None:
        if model not in MODELS:
            _fail(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        specs += [f"{model}:{u}" for u in unit] or [model]
    elif unit:
        _fail("--unit goes with --model; use --slave MODEL:UNIT to mix models")
    if not specs:
        _fail(f"give --model MODEL or --slave MODEL:UNIT; models: {', '.join(MODELS)}")
    if tcp is None and not rtu:
        _fail("give --tcp PORT and/or --rtu")
    try:
        slaves = parse_slaves(specs)
        asyncio.run(serve_models(slaves, tcp_port=tcp, rtu=rtu, baudrate=baudrate, parity=parity, seed=seed,
                                 control_port=control, time_factor=time_factor, turnaround_s=turnaround_ms / 1000,
                                 on_ready=lambda info: print(json.dumps(info), flush=True)))
    except ValueError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass
