"""`quanedge agent ...`: run and manage the edge agent on a box (the root CLI, quanedge/cli.py, adds
this group; it imports nothing of the fleet server, TUF tooling or training libraries).

    quanedge agent run|supervise|check-config|enroll|read|command
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from core.cli import fail as _fail
from core.cli import setup_logging as _setup_logging
from core.errors import QuanedgeError

ConfigOpt = typer.Option(..., "--config", "-c", help="Box config file (TOML).")


# --- agent ---------------------------------------------------------------------------------------
def build_app() -> typer.Typer:
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
                      root: Optional[Path] = typer.Option(None,
                                                          help="Updater root (default: [updater] root).")) -> None:
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
                   token: Optional[str] = typer.Option(None, help="Enrollment token (not needed to re-key a box that "
                                                       "holds its credential, or to collect an admitted request)."),
                   wait: float = typer.Option(0.0,
                                              help="Seconds to wait for an admin to admit a pending request.")) -> None:
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
