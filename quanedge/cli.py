"""The root app (see quanedge/__init__.py): each group is imported only when named on the command line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from core.cli import fail
from core.errors import QuanedgeError

__all__ = ["build_app", "main"]


def _agent() -> typer.Typer:
    from agent.cli import build_app

    return build_app()


def _fleet() -> typer.Typer:
    from fleet_server.cli import build_app  # the server stack: never on a box

    return build_app()


def _sim() -> typer.Typer:
    from hil_tests.sims.cli import add_device_simulators

    app = typer.Typer(help="Device simulators (for demos, tests and installer training).", no_args_is_help=True)
    add_device_simulators(app)
    return app


def _manifest() -> typer.Typer:
    from firmware_manifests.cli import app

    return app


def _models() -> typer.Typer:
    from edge_models.cli import app

    return app


def _rollout() -> typer.Typer:
    from fleet_server.rollout.cli import app

    return app


GROUPS: dict[str, Callable[[], typer.Typer]] = {
    "agent": _agent, "fleet": _fleet, "sim": _sim, "manifest": _manifest, "models": _models, "rollout": _rollout,
}


def _demo(
    seconds: float = typer.Option(20.0, help="How long the agent runs before the summary."),
    workdir: Optional[Path] = typer.Option(None, help="Where to keep the demo's files (default: a temp dir)."),
    broker: str = typer.Option("127.0.0.1:1883", help="MQTT broker to use when reachable."),
) -> None:
    """Simulated WXT530 -> agent -> fleet server (and the broker when one is reachable)."""
    from agent.demo import run_demo

    try:
        raise typer.Exit(run_demo(seconds=seconds, workdir=workdir, broker=broker))
    except QuanedgeError as exc:
        fail(exc)


def _root() -> None:
    """Quanedge: edge agent and fleet manager for city devices."""


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The root app; only the group named in argv is imported (all of them for --help)."""
    argv = sys.argv[1:] if argv is None else argv
    app = typer.Typer(help="Quanedge: edge agent and fleet manager for city devices.", no_args_is_help=True,
                      add_completion=False)
    app.callback()(_root)  # keeps `quanedge` a group even when only one sub-command is loaded
    app.command("demo")(_demo)
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    if wanted in (None, "scan"):
        from agent.scan import scan

        app.command("scan")(scan)
    for name, make in GROUPS.items():
        if wanted is not None and wanted != name:
            continue
        try:
            app.add_typer(make(), name=name)
        except ImportError as exc:  # e.g. the [fleet] extra is not installed on a box
            if wanted == name:
                typer.secho(f"error: `quanedge {name}` is not available here: {exc}", fg="red", err=True)
                raise SystemExit(2) from exc
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
