"""`quanedge fleet quarantine ...`: what the server acknowledged but could not process.

    quanedge fleet quarantine list [--server URL] [--admin-token T] [--reason R] [--after-id N]
        [--limit 50] [--all] [--json]
One line per message (id, time, transport, reason, size, topic, detail); --json prints the API's
objects (payload as text and base64), one per line. Reads GET /api/v1/quarantine.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import typer

from fleet_server.cli_http import call

__all__ = ["build_quarantine_app"]


def build_quarantine_app() -> typer.Typer:
    app = typer.Typer(help="Messages the server acknowledged but could not process.", no_args_is_help=True)

    @app.command("list")
    def list_(
        server: str = typer.Option("http://127.0.0.1:8080", "--server", help="Fleet server URL."),
        admin_token: str = typer.Option(..., "--admin-token", envvar="QUANEDGE_ADMIN_TOKEN"),
        reason: Optional[str] = typer.Option(None, "--reason", help="Only this reason (bad_json, internal, ...)."),
        after_id: int = typer.Option(0, "--after-id", help="Start after this quarantine id."),
        limit: int = typer.Option(50, "--limit", min=1, max=1000),
        all_pages: bool = typer.Option(False, "--all", help="Follow every page."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """List quarantined messages, oldest first."""
        shown = 0
        while True:
            params: dict[str, Any] = {"after_id": after_id, "limit": limit}
            if reason:
                params["reason"] = reason
            page = _get(server, admin_token, params)
            for message in page["messages"]:
                typer.echo(json.dumps(message) if as_json else _line(message))
            shown += len(page["messages"])
            after_id = page["next_after_id"]
            if not all_pages or not page["messages"]:
                break
        if not as_json:
            typer.echo(f"{shown} shown, {page['total']} in quarantine", err=True)

    return app


def _get(server: str, token: str, params: dict[str, Any]) -> Any:
    return call(server, token, "GET", "/api/v1/quarantine", params=params, timeout=30)


def _line(m: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m["received_at"]))
    size = f"{m['size']}B" + ("+" if m["truncated"] else "")
    return (f"{m['id']:>6}  {when}Z  {m['transport']:<4}  {m['reason']:<16}  {size:>8}  {m['topic']}  "
            f"{m['detail'][:120]}")
