"""`quanedge fleet user ...` and `quanedge fleet audit`: API users and the audit log, over HTTP.

    quanedge fleet user create NAME --role viewer|operator|admin [--note TEXT]   prints the token once
    quanedge fleet user list [--all] [--json]
    quanedge fleet user rotate NAME                                   a new token, printed once; the old one dies
    quanedge fleet user revoke NAME
    quanedge fleet audit [--user U] [--action A] [--since T] [--until T] [--limit N] [--before ID] [--json]
T is unix seconds, an ISO 8601 time (UTC unless it names its offset) or an age like 30m, 12h, 7d.
Every command takes --server (QUANEDGE_SERVER, default http://127.0.0.1:8080) and --token
(alias --admin-token; QUANEDGE_TOKEN or QUANEDGE_ADMIN_TOKEN): an admin user's token or the
server's admin token. A refusal prints the server's reason and exits 1.
"""

from __future__ import annotations

import json
import re
import time
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from fleet_server.cli_http import call as _call
from fleet_server.cli_http import when_utc

__all__ = ["register"]

ServerOpt = typer.Option("http://127.0.0.1:8080", "--server", envvar="QUANEDGE_SERVER", help="Fleet server URL.")
TokenOpt = typer.Option(..., "--token", "--admin-token", envvar=["QUANEDGE_TOKEN", "QUANEDGE_ADMIN_TOKEN"],
                        help="API token: an admin user's or the server's admin token.", show_default=False)
JsonOpt = typer.Option(False, "--json", help="One JSON object per line instead of a table.")
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(app: typer.Typer) -> None:
    """Add `user create|list|revoke` and `audit` to the `quanedge fleet` group."""
    users = typer.Typer(help="Named API users and their roles (admin role).", no_args_is_help=True)
    users.command("create")(create_user)
    users.command("list")(list_users)
    users.command("rotate")(rotate_user)
    users.command("revoke")(revoke_user)
    app.add_typer(users, name="user")
    app.command("audit")(audit)



def create_user(
    name: str = typer.Argument(..., help="1-64 characters [A-Za-z0-9._@-]; never reused."),
    role: str = typer.Option(..., "--role", help="viewer | operator | admin"),
    note: str = typer.Option("", "--note", help="Who or what the token is for."),
    server: str = ServerOpt, token: str = TokenOpt,
) -> None:
    """Create an API user; its token is printed once (last line), store it now."""
    user = _call(server, token, "POST", "/api/v1/users", json={"name": name, "role": role, "note": note})
    typer.echo(f"created {user['name']} ({user['role']}); its token, shown only this once:", err=True)
    typer.echo(user["token"])


def list_users(
    everyone: bool = typer.Option(False, "--all", help="Revoked users too."),
    as_json: bool = JsonOpt, server: str = ServerOpt, token: str = TokenOpt,
) -> None:
    """API users and their roles (never their tokens)."""
    users = _call(server, token, "GET", "/api/v1/users", params={"revoked": str(everyone).lower()})["users"]
    if as_json:
        for user in users:
            typer.echo(json.dumps(user))
        return
    table = Table("name", "role", "status", "created", "by", "revoked", "note")
    for u in users:
        status = "[green]active[/]" if u["active"] else "[red]revoked[/]"
        revoked = f"{when_utc(u['revoked_at'])} by {u['revoked_by']}" if u["revoked_at"] else ""
        table.add_row(u["name"], u["role"], status, when_utc(u["created_at"]), u["created_by"], revoked, u["note"])
    Console().print(table)


def rotate_user(name: str = typer.Argument(...), server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Give a user a new token (printed once, last line); the old one is refused from now on."""
    answer = _call(server, token, "POST", f"/api/v1/users/{name}/token")
    typer.echo(f"new token for {answer['name']}, shown only this once (the old one no longer works):", err=True)
    typer.echo(answer["token"])


def revoke_user(name: str = typer.Argument(...), server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Revoke a user's token; it is refused from the next request on."""
    user = _call(server, token, "DELETE", f"/api/v1/users/{name}")
    typer.echo(f"revoked {user['name']} ({user['role']}) at {when_utc(user['revoked_at'])} UTC")


def _time(text: str | None, now: float) -> str | None:
    """An age (30m, 12h, 7d) becomes unix seconds; other forms go to the server as they are."""
    if text is None:
        return None
    age = _AGE.match(text.strip())
    return str(now - float(age[1]) * _UNIT_S[age[2]]) if age else text


def audit(
    user: Optional[str] = typer.Option(None, "--user", help="Only this principal (user name, bootstrap-admin, "
                                       "anonymous)."),
    action: Optional[str] = typer.Option(None, "--action", help="Only this action, e.g. create_rollout."),
    since: Optional[str] = typer.Option(None, "--since", help="From this time: 30m, 12h, 7d, ISO 8601 or unix."),
    until: Optional[str] = typer.Option(None, "--until", help="Before this time (same forms)."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    before: Optional[int] = typer.Option(None, "--before", help="Page: entries older than this id."),
    as_json: bool = JsonOpt, server: str = ServerOpt, token: str = TokenOpt,
) -> None:
    """The audit log, newest first: who did what, to what, from where, with what outcome."""
    now = time.time()
    params = {k: v for k, v in (("user", user), ("action", action), ("since", _time(since, now)),
                                ("until", _time(until, now)), ("limit", limit), ("before", before)) if v is not None}
    page = _call(server, token, "GET", "/api/v1/audit", params=params)
    if page["next_before"] is not None:
        typer.echo(f"more: --before {page['next_before']}", err=True)
    if as_json:
        for entry in page["entries"]:
            typer.echo(json.dumps(entry))
        return
    table = Table("id", "time (UTC)", "who", "role", "action", "target", "status", "source", "parameters")
    for e in page["entries"]:
        style = {"ok": "green", "refused": "yellow"}.get(e["outcome"], "red")
        status = f"[{style}]{e['status']}[/]" + (f" {e['error']}" if e["error"] else "")
        params_text = e["parameters"] if len(e["parameters"]) <= 80 else e["parameters"][:77] + "..."
        table.add_row(str(e["id"]), when_utc(e["ts"]), e["principal"], e["role"], f"{e['method']} {e['action']}",
                      e["target"], status, e["source"], params_text)
    Console().print(table)
