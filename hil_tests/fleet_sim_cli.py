"""`quanedge sim fleet`: run N simulated boxes against a fleet server (see hil_tests/fleet_sim.py).

    quanedge sim fleet --boxes 10000 --server http://127.0.0.1:8080 --db var/fleet.db \\
        --failure-rate 0.01 --step-s 0.5 --duration 600
Enrollment: with --db the boxes are provisioned in one transaction straight into the server's
SQLite file (fast; ids must be new: change --prefix to re-run); otherwise through the API with
--admin-token (one multi-use enrollment token). Prints a JSON line of counters every
--report-s seconds and a final one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import typer

__all__ = ["fleet_command"]


def fleet_command(
    boxes: int = typer.Option(..., "--boxes", min=1, max=1_000_000, help="How many boxes to simulate."),
    server: str = typer.Option("http://127.0.0.1:8080", help="Fleet server URL (plain http)."),
    db: Path | None = typer.Option(None, help="Provision the boxes straight into this SQLite file."),
    admin_token: str | None = typer.Option(None, envvar="QUANEDGE_ADMIN_TOKEN",
                                              help="Enroll through the API instead (admin token)."),
    prefix: str = typer.Option("sim", help="Box ids are <prefix>-000000 ..."),
    hardware: str = typer.Option("qe-box-a", help="Hardware id the boxes report."),
    site: str = typer.Option("sim-site"),
    tag: list[str] = typer.Option(["sim"], "--tag", help="Tag(s) of every box; repeat for several."),
    agent_version: str = typer.Option("0.1.0"),
    failure_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of actions failing at installing."),
    reject_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of actions rejected at once."),
    stall_rate: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of actions that go silent (timeouts)."),
    step_s: float = typer.Option(0.5, min=0.0, help="Seconds spent in each state of an update."),
    seed: int = typer.Option(0),
    connections: int = typer.Option(32, min=1, max=1024, help="Keep-alive connections shared by all boxes."),
    duration: float = typer.Option(0.0, min=0.0, help="Stop after this many seconds (0: until Ctrl-C)."),
    report_s: float = typer.Option(5.0, min=0.5, help="Seconds between counter lines."),
) -> None:
    """Simulate a fleet of boxes polling a real fleet server and running its rollouts."""
    from hil_tests.fleet_sim import FleetSim, SimConfig, enroll_via_api, provision_sqlite, summary

    try:
        config = SimConfig(boxes=boxes, prefix=prefix, hardware=hardware, site=site, tags=tuple(tag),
                           agent_version=agent_version, failure_rate=failure_rate, reject_rate=reject_rate,
                           stall_rate=stall_rate, step_s=step_s, seed=seed, connections=connections)
    except ValueError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    if db is None and not admin_token:
        typer.secho("error: give --db (provision into the server's SQLite file) or --admin-token", fg="red", err=True)
        raise typer.Exit(2)

    async def main() -> None:
        started = time.monotonic()
        try:
            creds = (provision_sqlite(db, config) if db is not None
                     else await enroll_via_api(server, admin_token or "", config))
        except (ValueError, RuntimeError, OSError) as exc:
            typer.secho(f"error: cannot enroll the simulated boxes: {exc}", fg="red", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{len(creds)} boxes enrolled in {time.monotonic() - started:.1f} s; polling {server}")
        sim = FleetSim(server, config, creds)

        async def reporter() -> None:
            while True:
                await asyncio.sleep(report_s)
                typer.echo(summary(sim, started))

        task = asyncio.create_task(reporter())
        try:
            await sim.run(duration or None)
        finally:
            task.cancel()
            typer.echo(summary(sim, started))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
