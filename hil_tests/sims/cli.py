"""`quanedge sim ...`: every device kind's simulator commands, plus the simulated fleet.

Each kind brings its own commands (drivers/<kind>/sim_cli.py, listed by its descriptor in
drivers/registry.py); this module only puts them side by side. A command starts one simulator over
the device's real transport, prints ONE JSON line saying where it serves, and runs until SIGINT or
SIGTERM (drivers/sim_support.py has what they share, the `--control` port included):

    wxt530 / modbus    Modbus slaves (every shipped profile) on RTU ptys and TCP
    wxt-serial         WXT530 ASCII/NMEA on a new pty            {"pty": "/dev/pts/7", "line": "19200 8N1", ...}
    ntcip              NTCIP 1202 controller, SNMP on UDP        {"udp_port": 40161, ...}
    gbt20999           GB/T 20999 controller on TCP              {"tcp_port": 40999, ...}
    plate-camera       plate camera pushing to --push-url        {"push_url": "...", "serialno": ...}
    access-controller  ISAPI access controller on HTTP (digest)  {"url": "http://127.0.0.1:40080", ...}
    parking            parking line (detectors, counters, signs) {"pty": "/dev/pts/8", "line": "9600 8N1", ...}
    ocpp-charger       OCPP 1.6J charge point(s) to a box        {"chargers": [...], ...}
    fleet              thousands of simulated boxes checking in to a fleet server

Heavy imports (pysnmp, httpx, pymodbus, the simulators) happen inside the commands, so building
this app stays cheap. ``python -m hil_tests.sims.cli ntcip --port 0`` works without the root CLI.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

__all__ = ["add_device_simulators", "build_app", "device_simulators"]


def device_simulators() -> dict[str, Callable[..., None]]:
    """{command name: typer command function} of every registered kind that has a simulator."""
    from drivers.registry import KINDS

    out: dict[str, Callable[..., None]] = {}
    for kind in KINDS.values():
        if kind.simulators is not None:
            out.update(kind.simulators())
    return out


def add_device_simulators(app: typer.Typer) -> None:
    from hil_tests.fleet_sim_cli import fleet_command

    for name, command in device_simulators().items():
        app.command(name)(command)
    app.command("fleet")(fleet_command)


def build_app() -> typer.Typer:
    app = typer.Typer(help="Device simulators on their real transports.", no_args_is_help=True,
                      add_completion=False)
    add_device_simulators(app)
    return app


if __name__ == "__main__":
    build_app()()
