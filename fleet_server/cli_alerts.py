"""`quanedge fleet alerts ...`: what the server raised for an operator (fleet_server.alerts).

    quanedge fleet alerts list [--kind seq_gap] [--box BOX] [--state open|acknowledged|resolved] [--all]
                               [--after-id N] [--limit 50] [--json]
    quanedge fleet alerts ack ID
`list` shows open alerts, oldest first (--state: those in that state; --all: every state), one
table row each: id, time raised (UTC), box, kind, what it is about (a seq gap: its range, how many
readings, why; others: subject and detail), how often it was raised, its state, and who
acknowledged it when / when it was resolved; --json prints the API's objects, one per line. Listing needs a
viewer token, `ack` an operator's. Both take --server (QUANEDGE_SERVER) and --token
(QUANEDGE_TOKEN or QUANEDGE_ADMIN_TOKEN); a refusal prints the server's reason and exits 1.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fleet_server.cli_http import call, when_utc

__all__ = ["register"]

ServerOpt = typer.Option("http://127.0.0.1:8080", "--server", envvar="QUANEDGE_SERVER", help="Fleet server URL.")
TokenOpt = typer.Option(..., "--token", "--admin-token", envvar=["QUANEDGE_TOKEN", "QUANEDGE_ADMIN_TOKEN"],
                        help="API token (viewer to list, operator to acknowledge).", show_default=False)


def register(app: typer.Typer) -> None:
    """Add `alerts list|ack` to the `quanedge fleet` group."""
    alerts = typer.Typer(help="Alerts the server raised (seq gaps, ...).", no_args_is_help=True)
    alerts.command("list")(list_alerts)
    alerts.command("ack")(ack_alert)
    app.add_typer(alerts, name="alerts")



def _state(alert: dict[str, Any]) -> str:
    """The state column: open in red; acknowledged by whom when; resolved when."""
    text = ""
    if alert["acked_at"] is not None:
        text = f"acknowledged {when_utc(alert['acked_at'])} by {alert['acked_by']}"
    if alert.get("resolved_at") is not None:
        text = f"resolved {when_utc(alert['resolved_at'])}" + (f"; {text}" if text else "")
    return escape(text) if text else "[red]open[/]"


def summary(alert: dict[str, Any]) -> str:
    """One line on what the alert is about."""
    detail = alert["detail"]
    if alert["kind"] == "seq_gap":
        return f"seqs {detail['first']}..{detail['last']}: {detail['missing']} readings missing ({detail['reason']})"
    text = json.dumps(detail, separators=(",", ":"))
    if alert.get("subject"):
        text = f"{alert['subject']}: {text}"
    return text if len(text) <= 80 else text[:77] + "..."


def list_alerts(
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind, e.g. seq_gap."),
    box: Optional[str] = typer.Option(None, "--box", help="Only this box."),
    state: Optional[str] = typer.Option(None, "--state", help="open, acknowledged or resolved (default: open)."),
    everything: bool = typer.Option(False, "--all", help="Alerts in every state."),
    after_id: int = typer.Option(0, "--after-id", help="Page: alerts after this id."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table."),
    server: str = ServerOpt, token: str = TokenOpt,
) -> None:
    """Open alerts, oldest first."""
    params: dict[str, Any] = {"after_id": after_id, "limit": limit}
    params.update({k: v for k, v in (("kind", kind), ("box_id", box)) if v})
    if state is not None:
        params["state"] = state
    elif not everything:
        params["state"] = "open"
    page = call(server, token, "GET", "/api/v1/alerts", params=params, timeout=30)
    alerts = page["alerts"]
    if len(alerts) == limit:
        typer.echo(f"more: --after-id {page['next_after_id']}", err=True)
    if as_json:
        for alert in alerts:
            typer.echo(json.dumps(alert))
        return
    table = Table("id", "raised (UTC)", "box", "kind", "what", "times", "state")
    for a in alerts:
        table.add_row(str(a["id"]), when_utc(a["raised_at"]), escape(a["box_id"] or ""), escape(a["kind"]),
                      escape(summary(a)), str(a.get("count", 1)), _state(a))
    Console().print(table)


def ack_alert(alert_id: int = typer.Argument(..., min=1, help="The alert's id (from `alerts list`)."),
              server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Acknowledge an alert (operator role); one already acknowledged stays as it was."""
    alert = call(server, token, "POST", f"/api/v1/alerts/{alert_id}/ack", timeout=30)
    typer.echo(f"alert {alert['id']} ({alert['kind']}, {alert['box_id'] or 'no box'}) acknowledged by "
               f"{alert['acked_by']} at {when_utc(alert['acked_at'])} UTC")
