"""`quanedge fleet command ...`: send a command to boxes and follow its results (fleet_server.commands).

    quanedge fleet command send DEVICE COMMAND (--box BOX ... | --site SITE [--tag TAG]) [--arg k=v ...]
                                [--deadline 300] [--wait 30]
    quanedge fleet command list [--box BOX] [--state done] [--limit 50] [--json]
    quanedge fleet command show ID
`send` needs an operator token; it prints one row per box and, with --wait N (default 30 s; 0 to
return at once), shows a progress bar until every box has a result or N seconds pass, then
the table of results (done, refused with the box's reason, failed, expired). It exits 1 when a
box did not answer `done`. `list` and `show` need a viewer token. All take --server
(QUANEDGE_SERVER) and --token (QUANEDGE_TOKEN or QUANEDGE_ADMIN_TOKEN).
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from core.fleet_command import parse_arg
from fleet_server.cli_http import call, fail, when_utc

__all__ = ["register"]

ServerOpt = typer.Option("http://127.0.0.1:8080", "--server", envvar="QUANEDGE_SERVER", help="Fleet server URL.")
TokenOpt = typer.Option(..., "--token", "--admin-token", envvar=["QUANEDGE_TOKEN", "QUANEDGE_ADMIN_TOKEN"],
                        help="API token (operator to send, viewer to list).", show_default=False)
_OPEN = ("pending", "sent")


def register(app: typer.Typer) -> None:
    """Add `command send|list|show` to the `quanedge fleet` group."""
    group = typer.Typer(help="Commands to boxes: open a gate, set a pattern, re-read a device, ...",
                        no_args_is_help=True)
    group.command("send")(send)
    group.command("list")(list_commands)
    group.command("show")(show)
    app.add_typer(group, name="command")



def _parse_arg(text: str) -> tuple[str, Any]:
    try:
        return parse_arg(text)
    except ValueError as exc:
        fail(str(exc))


def _table(commands: list[dict[str, Any]]) -> Table:
    colour = {"done": "green", "refused": "yellow", "failed": "red", "expired": "red"}
    table = Table("command", "box", "device", "command", "state", "message", "finished (UTC)")
    for c in commands:
        state = c["state"]
        table.add_row(c["command_id"], escape(c["box_id"]), escape(c["device"]), escape(c["command"]),
                      f"[{colour.get(state, 'white')}]{state}[/]", escape(c["message"] or ""),
                      when_utc(c["finished_at"]))
    return table


def send(
    device: str = typer.Argument(..., help="The device's name in the box config."),
    command: str = typer.Argument(..., help="The command, e.g. open_door, set_pattern, allow_plate."),
    box: list[str] = typer.Option([], "--box", help="A box id (repeat for several)."),
    site: Optional[str] = typer.Option(None, "--site", help="Every box of this site."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Every box with this tag (with --site: both)."),
    arg: list[str] = typer.Option([], "--arg", help="name=value (JSON values: 1, true, [1,2]); repeatable."),
    deadline: int = typer.Option(300, "--deadline", min=1, help="Seconds the boxes have to run it."),
    wait: float = typer.Option(30.0, "--wait", min=0, help="Seconds to wait for the results (0: do not)."),
    server: str = ServerOpt, token: str = TokenOpt,
) -> None:
    """Send a command to boxes; wait for their results."""
    body: dict[str, Any] = {"device": device, "command": command, "args": dict(_parse_arg(a) for a in arg),
                            "deadline_s": deadline}
    if box:
        body["box_ids"] = box
    body.update({k: v for k, v in (("site", site), ("tag", tag)) if v})
    sent = call(server, token, "POST", "/api/v1/commands", json=body, timeout=60)["commands"]
    if not sent:
        fail("no box matched the selection; nothing was sent")
    ids = [c["command_id"] for c in sent]
    latest = {c["command_id"]: c for c in sent}
    if wait > 0:
        until = time.monotonic() + wait
        with Progress(transient=True) as progress:
            task = progress.add_task("waiting for results", total=len(ids))
            while time.monotonic() < until:
                for command_id in [i for i in ids if latest[i]["state"] in _OPEN]:
                    latest[command_id] = call(server, token, "GET", f"/api/v1/commands/{command_id}", timeout=30)
                done = sum(latest[i]["state"] not in _OPEN for i in ids)
                progress.update(task, completed=done)
                if done == len(ids):
                    break
                time.sleep(0.5)
    Console().print(_table([latest[i] for i in ids]))
    if any(latest[i]["state"] != "done" for i in ids):
        raise typer.Exit(1)


def list_commands(
    box: Optional[str] = typer.Option(None, "--box", help="Only this box."),
    state: Optional[str] = typer.Option(None, "--state", help="pending, sent, done, refused, failed or expired."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
    server: str = ServerOpt, token: str = TokenOpt,
) -> None:
    """Commands, newest first."""
    params: dict[str, Any] = {"limit": limit}
    params.update({k: v for k, v in (("box_id", box), ("state", state)) if v})
    found = call(server, token, "GET", "/api/v1/commands", params=params, timeout=30)["commands"]
    if as_json:
        for c in found:
            typer.echo(json.dumps(c))
        return
    Console().print(_table(found))


def show(command_id: str = typer.Argument(..., help="The command's id (c-...)."),
         server: str = ServerOpt, token: str = TokenOpt) -> None:
    """One command, as JSON."""
    typer.echo(json.dumps(call(server, token, "GET", f"/api/v1/commands/{command_id}", timeout=30), indent=2))
