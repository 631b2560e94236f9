"""The `quanedge` command.

Sub-commands are registered lazily: `quanedge agent ...` imports only the agent, so a box never
loads the fleet server's stack (FastAPI, SQLite store), TUF tooling or training libraries.

    quanedge agent run|supervise|check-config|enroll|read|command
    quanedge fleet serve|token
    quanedge sim wxt530 | modbus --model M (the Modbus device family) | fleet
    quanedge scan --port /dev/ttyUSB0   (installer: find and identify the slaves on a bus)
    quanedge demo
    quanedge manifest ...   (signed update metadata)
    quanedge models ...     (edge models)
    quanedge rollout ...    (OTA rollouts, for fleet admins)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from core.errors import QuanedgeError

ConfigOpt = typer.Option(..., "--config", "-c", help="Box config file (TOML).")


def _fail(exc: BaseException, code: int = 2) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    from agent.logs import setup_logging

    setup_logging(verbose)


# --- agent ---------------------------------------------------------------------------------------
def _agent_app() -> typer.Typer:
    app = typer.Typer(help="Run and manage the edge agent on a box.", no_args_is_help=True)

    @app.command("run")
    def run(config: Path = ConfigOpt, verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
        """Run the agent until SIGTERM/SIGINT."""
        import asyncio

        from agent.config import load_config
        from agent.runtime import run_agent

        _setup_logging(verbose)
        try:
            cfg = load_config(config)
            asyncio.run(run_agent(cfg))
        except QuanedgeError as exc:
            _fail(exc)

    @app.command("check-config")
    def check_config(config: Path = typer.Argument(..., help="Box config file (TOML).")) -> None:
        """Validate a box config; print a summary or the first error (file, key, value, expected)."""
        from agent.config import load_config

        try:
            cfg = load_config(config)
        except QuanedgeError as exc:
            _fail(exc)
        if cfg.models:  # the model files must be there and match their manifests (sha256)
            from agent.runtime import _inference_stage

            stage = _inference_stage(cfg)
            stage.close()
            if stage.load_errors:
                _fail("; ".join(stage.load_errors))
        from agent.config_warnings import config_warnings

        for warning in config_warnings(cfg):
            typer.echo(f"warning: {warning}", err=True)
        updates = "updates on" if cfg.updater is not None and cfg.updater.enabled else "updates off"
        typer.echo(f"ok: box {cfg.box.id} ({cfg.box.hardware}, site {cfg.box.site}), "
                   f"{len(cfg.buses)} bus(es), {len(cfg.devices)} device(s), uplink {cfg.uplink.kind}, "
                   f"buffer cap {cfg.buffer.max_bytes} bytes at {cfg.buffer.path}, {len(cfg.models)} model(s), "
                   f"{len(cfg.junctions)} junction(s), {updates}")

    @app.command("supervise")
    def supervise_cmd(config: Path = ConfigOpt,
                      root: Optional[Path] = typer.Option(None, help="Updater root (default: [updater] root).")) -> None:
        """Run the agent under the update supervisor: A/B slots, health check after a switch, rollback.

        This is what the service manager runs on a box with updates on (`agent run` is the agent alone)."""
        from agent.updater.launcher import supervise

        _setup_logging(False)
        try:
            code = supervise(config, root)
        except QuanedgeError as exc:
            _fail(exc)
        raise typer.Exit(code)

    @app.command("enroll")
    def enroll_cmd(config: Path = ConfigOpt, server: str = typer.Option(..., help="Fleet server URL."),
                   token: Optional[str] = typer.Option(None, help="Enrollment token (not needed to re-key a box "
                                                       "that holds its credential, or to collect an admitted request)."),
                   wait: float = typer.Option(0.0, help="Seconds to wait for an admin to admit a pending request.")) -> None:
        """Enroll (or re-key) this box with the fleet server and store its credential and MQTT identity."""
        from agent.config import load_config
        from agent.enroll import enroll

        try:
            cfg = load_config(config)
            cred = enroll(cfg, server, token, wait_s=wait)
        except QuanedgeError as exc:
            _fail(exc)
        mqtt = f", MQTT account {cred.mqtt_username}" if cred.mqtt_username else ""
        typer.echo(f"enrolled box {cred.box_id} with {cred.server}{mqtt}; credential stored in {cfg.credential_path}")

    @app.command("read")
    def read(config: Path = ConfigOpt, device: str = typer.Option(..., help="Device name from the config."),
             interval: float = typer.Option(1.0, help="Seconds between reads."),
             count: int = typer.Option(0, help="Stop after this many reads (0 = until Ctrl-C).")) -> None:
        """Show a device's live decoded points in a refreshing table (for installers)."""
        import asyncio

        from agent.config import load_config
        from agent.live_read import live_read

        try:
            cfg = load_config(config)
            asyncio.run(live_read(cfg, device, interval, count))
        except QuanedgeError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            pass

    @app.command("command")
    def command_cmd(
        config: Path = ConfigOpt,
        device: str = typer.Option(..., help="Device name from the config."),
        command: str = typer.Option(..., "--command", help="Command name, e.g. open, set_pattern, reset_rain."),
        arg: Optional[list[str]] = typer.Option(None, "--arg", help="name=value (1, true, [1,2] are JSON); repeat."),
        timeout: float = typer.Option(30.0, help="Seconds to wait for the agent's answer."),
    ) -> None:
        """Send a command to a device through the RUNNING agent: allow-listed, guarded and audited.

        Exit status: 0 done, 3 refused, 4 the device failed, 2 config/agent unreachable."""
        import getpass

        from agent.commands import parse_arg, send_local_command
        from agent.config import load_config

        try:
            cfg = load_config(config)
            args = dict(parse_arg(a) for a in arg or [])
            status, body = send_local_command(cfg, device, command, args, origin=f"cli:{getpass.getuser()}",
                                              timeout_s=timeout)
        except (QuanedgeError, ValueError) as exc:
            _fail(exc)
        if status == 200:
            typer.echo(f"done: {command} on {device} {json.dumps(body.get('args', {}), ensure_ascii=False)} "
                       f"in {body.get('took_ms')} ms (audited)")
            return
        outcome = {403: "refused", 502: "failed"}.get(status, f"error (HTTP {status})")
        typer.secho(f"{outcome}: {body.get('message', body)}", fg=typer.colors.RED, err=True)
        raise typer.Exit({403: 3, 502: 4}.get(status, 2))

    return app


# --- fleet ---------------------------------------------------------------------------------------
def _fleet_app() -> typer.Typer:
    from fleet_server.cli import build_app as build_fleet_app  # the server stack: never on a box

    return build_fleet_app()


# --- simulators ----------------------------------------------------------------------------------
def _sim_app() -> typer.Typer:
    app = typer.Typer(help="Device simulators (for demos, tests and installer training).", no_args_is_help=True)

    from hil_tests.sims.cli import add_device_simulators

    add_device_simulators(app)
    return app


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
        _fail(exc)


_GROUPS: dict[str, Callable[[], typer.Typer]] = {
    "agent": _agent_app,
    "fleet": _fleet_app,
    "sim": _sim_app,
}


def _lazy_groups() -> dict[str, Callable[[], typer.Typer]]:
    groups = dict(_GROUPS)

    def manifest() -> typer.Typer:
        from firmware_manifests.cli import app
        return app

    def models() -> typer.Typer:
        from edge_models.cli import app
        return app

    def rollout() -> typer.Typer:
        from fleet_server.rollout.cli import app
        return app

    groups["manifest"] = manifest
    groups["models"] = models
    groups["rollout"] = rollout
    return groups


def _root() -> None:
    """Quanedge: edge agent and fleet manager for city devices."""


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """The root app; only the sub-app named in argv is imported (all of them for --help)."""
    argv = sys.argv[1:] if argv is None else argv
    app = typer.Typer(help="Quanedge: edge agent and fleet manager for city devices.", no_args_is_help=True,
                      add_completion=False)
    app.callback()(_root)  # keeps `quanedge` a group even when only one sub-command is loaded
    app.command("demo")(_demo)
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    if wanted in (None, "scan"):
        from agent.scan import scan

        app.command("scan")(scan)
    for name, make in _lazy_groups().items():
        if wanted is not None and wanted != name:
            continue
        try:
            app.add_typer(make(), name=name)
        except ImportError as exc:  # e.g. the [fleet] extra is not installed on a box
            if wanted == name:
                typer.secho(f"error: `quanedge {name}` is not available here: {exc}", fg="red", err=True)
                raise SystemExit(2)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
