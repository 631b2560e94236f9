"""`quanedge rollout ...`: the admin's rollout commands, talking to the fleet server's admin API.

    quanedge rollout create TARGET --kind agent [--component C] [--tag T]... [--site S]...
        [--hardware H]... [--from-version V]... [--box B]... [--waves 1,1%,10%,50%,100%]
        [--success-pct 90] [--error-pct 10] [--min-finished 10] [--timeout 3600] [--rate N]
        [--ignore-windows] [--name NAME]
    quanedge rollout status ID [--watch] [--interval 2]   per-wave progress bars, counts by state
    quanedge rollout list [--active]
    quanedge rollout pause|resume|cancel ID
    quanedge rollout window SITE --tz Europe/Berlin [--allow 'mon-fri 22:00-05:00']...
        [--blackout 'mon-fri 07:00-09:30[ firmware]']...
Every command takes --server (default http://127.0.0.1:8080) and --admin-token
(QUANEDGE_ADMIN_TOKEN). A refusal prints the server's reason and exits 1.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from fleet_server.cli_http import call as _call
from fleet_server.cli_http import fail as _fail

__all__ = ["app", "render"]

app = typer.Typer(help="Roll updates out to the fleet in waves.", no_args_is_help=True)
ServerOpt = typer.Option("http://127.0.0.1:8080", "--server", help="Fleet server URL.")
TokenOpt = typer.Option(..., "--admin-token", envvar="QUANEDGE_ADMIN_TOKEN", help="Admin bearer token.")
_STATES = ("assigned", "proceeding", "downloading", "downloaded", "installing", "restarting",
           "success", "failure", "rejected", "canceled")
_STATUS_STYLE = {"running": "green", "paused": "yellow", "canceled": "red", "finished": "cyan"}


@app.command("create")
def create(
    target: str = typer.Argument(..., help="Published target name in the update repository."),
    kind: str = typer.Option(..., help="agent | model | firmware | config"),
    component: str = typer.Option("", help="Model or device name (model and firmware rollouts)."),
    tag: list[str] = typer.Option([], "--tag", help="Boxes with ALL of these tags."),
    site: list[str] = typer.Option([], "--site", help="Boxes at one of these sites."),
    hardware: list[str] = typer.Option([], "--hardware", help="Boxes of one of these hardware ids."),
    from_version: list[str] = typer.Option([], "--from-version", help="Boxes currently at one of these."),
    box: list[str] = typer.Option([], "--box", help="Only these box ids."),
    waves: str = typer.Option("1,1%,10%,50%,100%", help="Cumulative wave sizes, 'N' boxes or 'P%'."),
    success_pct: float = typer.Option(90.0, help="% of a wave that must succeed before the next one."),
    error_pct: float = typer.Option(10.0, help="% of a wave failing that pauses the rollout."),
    min_finished: int = typer.Option(10, help="Finished actions in a wave before the failure ratio counts."),
    timeout: int = typer.Option(3600, help="Seconds a box has to finish; then it counts as failed."),
    rate: Optional[float] = typer.Option(None, help="At most this many new boxes per minute."),
    ignore_windows: bool = typer.Option(False, help="Ignore site maintenance windows (emergencies)."),
    version: Optional[str] = typer.Option(None, help="Expected version (checked against the signed one)."),
    name: str = typer.Option(""),
    server: str = ServerOpt, admin_token: str = TokenOpt,
) -> None:
    """Create (and start) a rollout of a signed target."""
    body = {"target_name": target, "kind": kind, "component": component, "name": name, "version": version,
            "filter": {"tags": tag, "sites": site, "hardware": hardware, "current_versions": from_version,
                       "box_ids": box},
            "waves": [w.strip() for w in waves.split(",") if w.strip()], "success_pct": success_pct,
            "error_pct": error_pct, "min_finished": min_finished, "timeout_s": timeout, "rate_per_min": rate,
            "respect_windows": not ignore_windows}
    view = _call(server, admin_token, "POST", "/api/v1/rollouts", json=body)
    sizes = ", ".join(str(w["capacity"]) for w in view["waves"])
    typer.echo(f"{view['rollout_id']}: {view['kind']} {view['target_name']} {view['version']} to "
               f"{view['total']} boxes in waves of {sizes}")


@app.command("status")
def status(
    rollout_id: str = typer.Argument(...),
    watch: bool = typer.Option(False, "--watch", "-w", help="Refresh until the rollout ends (Ctrl-C stops)."),
    interval: float = typer.Option(2.0, min=0.2),
    server: str = ServerOpt, admin_token: str = TokenOpt,
) -> None:
    """Progress per wave and boxes by state."""
    console = Console()
    view = _call(server, admin_token, "GET", f"/api/v1/rollouts/{rollout_id}")
    if not watch:
        console.print(render(view))
        return
    try:
        with Live(render(view), console=console, refresh_per_second=4) as live:
            while view["status"] in ("running", "paused"):
                time.sleep(interval)
                view = _call(server, admin_token, "GET", f"/api/v1/rollouts/{rollout_id}")
                live.update(render(view))
    except KeyboardInterrupt:
        pass


def render(view: dict[str, Any]) -> Group:
    """Header, one progress bar per wave (succeeded of capacity) and a table of counts by state."""
    style = _STATUS_STYLE.get(view["status"], "white")
    header = (f"[bold]{view['rollout_id']}[/] {view['name']}  [{style}]{view['status']}[/]"
              f"  {view['kind']} {view['version']}  {view['total']} boxes, wave {view['current_wave']}"
              f"/{len(view['waves'])}")
    if view.get("pause_reason"):
        header += f"\n[yellow]{view['pause_reason']}[/]"
    bars = Progress(TextColumn("wave {task.fields[no]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[note]}"), auto_refresh=False)
    for wave in view["waves"]:
        errors = wave["failed"] + wave["rejected"]
        note = f"assigned {wave['assigned']}" + (f", [red]{errors} failed[/]" if errors else "")
        bars.add_task("", total=wave["capacity"], completed=wave["succeeded"], no=wave["wave"], note=note)
    counts = view.get("counts", {})
    table = Table(box=None, pad_edge=False)
    table.add_column("wave")
    states = ["pending"] + [s for s in _STATES if any(s in c for c in counts.values())]
    for state in states:
        table.add_column(state, justify="right")
    for wave in sorted(counts, key=lambda w: (w == "unassigned", w.zfill(4))):
        table.add_row(wave, *(str(counts[wave].get(s, "")) for s in states))
    return Group(header, bars, table)


@app.command("list")
def list_rollouts(active: bool = typer.Option(False, "--active"), server: str = ServerOpt,
                  admin_token: str = TokenOpt) -> None:
    """Rollouts, oldest first."""
    views = _call(server, admin_token, "GET", "/api/v1/rollouts", params={"active": str(active).lower()})
    for v in views["rollouts"]:
        done = sum(w["succeeded"] for w in v["waves"])
        typer.echo(f"{v['rollout_id']}  {v['status']:<9} {v['kind']:<8} {v['target_name']} {v['version']}"
                   f"  {done}/{v['total']} succeeded")


def _command(name: str) -> None:
    def run(rollout_id: str = typer.Argument(...), server: str = ServerOpt, admin_token: str = TokenOpt) -> None:
        view = _call(server, admin_token, "POST", f"/api/v1/rollouts/{rollout_id}/{name}")
        typer.echo(f"{view['rollout_id']}: {view['status']}")

    run.__doc__ = {"pause": "Stop assigning boxes (running ones continue).",
                   "resume": "Resume; errors so far are accepted, thresholds count newer ones.",
                   "cancel": "Cancel: open actions are closed as canceled, no box is assigned."}[name]
    app.command(name)(run)


for _name in ("pause", "resume", "cancel"):
    _command(_name)


def _window(text: str) -> dict[str, Any]:
    """'mon-fri 22:00-05:00 [kind,kind]' -> {"days", "start", "end"[, "kinds"]}."""
    parts = text.split()
    if len(parts) not in (2, 3) or "-" not in parts[1]:
        _fail(f"bad window {text!r}; expected like 'mon-fri 22:00-05:00' or 'daily 07:00-09:30 firmware'")
    start, end = parts[1].split("-", 1)
    out: dict[str, Any] = {"days": parts[0], "start": start, "end": end}
    if len(parts) == 3:
        out["kinds"] = parts[2].split(",")
    return out


@app.command("window")
def window(
    site: str = typer.Argument(...),
    tz: str = typer.Option(..., "--tz", help="IANA time zone of the site, e.g. Europe/Berlin."),
    allow: list[str] = typer.Option([], "--allow", help="Allowed window, e.g. 'mon-fri 22:00-05:00'."),
    blackout: list[str] = typer.Option([], "--blackout", help="No updates, e.g. 'mon-fri 07:00-09:30 firmware'."),
    server: str = ServerOpt, admin_token: str = TokenOpt,
) -> None:
    """Set a site's maintenance windows (local time); replaces the previous policy."""
    body = {"timezone": tz, "windows": [_window(w) for w in allow], "blackouts": [_window(b) for b in blackout]}
    policy = _call(server, admin_token, "PUT", f"/api/v1/sites/{site}/maintenance", json=body)
    typer.echo(f"{policy['site']} ({policy['timezone']}): {len(policy['windows'])} window(s), "
               f"{len(policy['blackouts'])} blackout(s)")
