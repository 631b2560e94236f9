"""`quanedge fleet box ...` and `quanedge fleet broker init`: admission, decommission, broker bootstrap.

    quanedge fleet box pending  [--state pending|accepted|rejected|issued|all]
    quanedge fleet box admit  REQUEST_ID        the box collects its credential on its next poll
    quanedge fleet box reject REQUEST_ID
    quanedge fleet box revoke BOX_ID            HTTP credential and broker account dead at once
    quanedge fleet broker init --admin-username U --admin-password P --bridge-username B ...
Box commands talk to the fleet server's admin API (--server, --admin-token / QUANEDGE_ADMIN_TOKEN);
`broker init` talks to the broker itself, as the dynsec admin made by `mosquitto_ctrl dynsec init`.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from core.cli import fail as _fail
from fleet_server.cli_http import call

__all__ = ["register"]

ServerOpt = typer.Option("http://127.0.0.1:8080", "--server", help="Fleet server URL.")
AdminOpt = typer.Option(..., "--admin-token", envvar="QUANEDGE_ADMIN_TOKEN", help="Admin bearer token.")


def _call(server: str, admin_token: str, method: str, path: str, **params: Any) -> Any:
    return call(server, admin_token, method, path, params=params or None, timeout=15)


def register(app: typer.Typer) -> None:
    """Add the `box` and `broker` groups to the fleet CLI (one line in build_app)."""
    box = typer.Typer(help="Admit, reject and revoke boxes.", no_args_is_help=True)
    broker = typer.Typer(help="Bootstrap the MQTT broker's accounts.", no_args_is_help=True)
    app.add_typer(box, name="box")
    app.add_typer(broker, name="broker")

    @box.command("pending")
    def pending(state: str = typer.Option("pending", help="pending|accepted|rejected|issued|all"),
                server: str = ServerOpt, admin_token: str = AdminOpt) -> None:
        """List admission requests (one line each: id, box, hardware, site, whether the id exists)."""
        for req in _call(server, admin_token, "GET", "/api/v1/admission", state=state)["requests"]:
            exists = "existing id" if req["box_exists"] else "new id"
            typer.echo(f"{req['request_id']}  {req['box_id']}  hardware={req['hardware']}  site={req['site']}  "
                       f"{exists}  {req['state']}")

    @box.command("admit")
    def admit(request_id: str, server: str = ServerOpt, admin_token: str = AdminOpt) -> None:
        """Accept an admission request; the box gets its credential on its next poll."""
        req = _call(server, admin_token, "POST", f"/api/v1/admission/{request_id}/accept")
        typer.echo(f"admitted {req['box_id']} ({req['request_id']})")

    @box.command("reject")
    def reject(request_id: str, server: str = ServerOpt, admin_token: str = AdminOpt) -> None:
        """Reject an admission request."""
        req = _call(server, admin_token, "POST", f"/api/v1/admission/{request_id}/reject")
        typer.echo(f"rejected {req['box_id']} ({req['request_id']})")

    @box.command("revoke")
    def revoke(box_id: str, server: str = ServerOpt, admin_token: str = AdminOpt) -> None:
        """Decommission a box: its HTTP credential and its broker account stop working at once."""
        out = _call(server, admin_token, "POST", f"/api/v1/boxes/{box_id}/revoke")
        broker_note = "broker account deleted" if out["broker_account_deleted"] else "no broker accounts managed"
        typer.echo(f"revoked {out['box_id']}: HTTP credential dead, {broker_note}")

    @broker.command("init")
    def init(
        mqtt_host: str = typer.Option("127.0.0.1"), mqtt_port: int = typer.Option(1883),
        admin_username: str = typer.Option(..., envvar="QUANEDGE_BROKER_ADMIN_USERNAME"),
        admin_password: str = typer.Option(..., envvar="QUANEDGE_BROKER_ADMIN_PASSWORD"),
        bridge_username: str = typer.Option("quanedge-fleet", help="The fleet server bridge's account."),
        bridge_password: str = typer.Option(..., envvar="QUANEDGE_MQTT_PASSWORD"),
        topic_prefix: str = typer.Option("quanedge"),
        bridge_client_id: Optional[str] = typer.Option(
            None, help="Bind the bridge account to this one client id (a single fleet server). Default: not "
            "bound, so each replica connects with its own (quanedge-fleet-<prefix>@<replica id>)."),
        mqtt_tls: bool = typer.Option(False), mqtt_ca_file: Optional[str] = typer.Option(None),
    ) -> None:
        """Create (or reset) the bridge's role and account and deny-by-default ACL access."""
        import asyncio

        import aiomqtt

        from core.errors import QuanedgeError
        from fleet_server.broker import DynsecAccounts, DynsecClient

        tls = aiomqtt.TLSParameters(ca_certs=mqtt_ca_file) if mqtt_tls else None
        accounts = DynsecAccounts(DynsecClient(mqtt_host, mqtt_port, admin_username, admin_password,
                                               tls_params=tls), topic_prefix)
        try:
            asyncio.run(accounts.bootstrap(bridge_username, bridge_password, bridge_client_id))
        except QuanedgeError as exc:
            _fail(exc)
        bound = f"client id {bridge_client_id}" if bridge_client_id else "any client id: one per replica"
        typer.echo(f"broker {mqtt_host}:{mqtt_port}: bridge account {bridge_username!r} ({bound}) may read "
                   f"{topic_prefix}/+/telemetry and /status (shared: $share/<group>/...); everything else is "
                   "denied by default")
