"""The one HTTP helper of the admin CLIs (`quanedge fleet user|audit|box|quarantine`, `quanedge
rollout`): call the fleet API with a bearer token, and turn any failure into one red line and exit 1.

    call(server, token, "POST", "/api/v1/users", json={...}) -> the decoded JSON body
A refusal prints the server's reason (`detail`; FastAPI's schema errors as `field: message`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, NoReturn

import httpx
import typer

__all__ = ["call", "fail", "reason", "when_utc"]


def when_utc(ts: float | None) -> str:
    """A unix time as `YYYY-MM-DD HH:MM:SS` (UTC) for a table cell; "" for None."""
    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def call(server: str, token: str, method: str, path: str, *, timeout: float = 60.0, **kwargs: Any) -> Any:
    """`method path` on `server` with `Authorization: Bearer token`; the JSON answer, or exit 1."""
    try:
        r = httpx.request(method, server.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"},
                          timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {server}: {exc}")
    if r.status_code >= 400:
        fail(f"server refused ({r.status_code}): {reason(r)}")
    return r.json()


def reason(r: httpx.Response) -> str:
    """The server's reason for a refusal, in one line."""
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # schema errors: [{"loc": [...], "msg": ...}]
        return "; ".join(f"{'.'.join(map(str, e.get('loc', [])[1:]))}: {e.get('msg')}"
                         for e in detail if isinstance(e, dict))
    return str(detail)[:300]
