"""`quanedge fleet ...`: run and administer the fleet server.

    quanedge fleet serve --db var/fleet.db --admin-token T [--mqtt-host H] [--replica-id R] [--tuf-repo DIR] ...
    quanedge fleet token --server URL --admin-token T        one-time enrollment token
    quanedge fleet quarantine list --server URL --admin-token T   messages kept, not processed
    quanedge fleet user create|list|rotate|revoke ...        API users and roles (fleet_server.cli_admin)
    quanedge fleet audit [--user U] [--action A] [--since T]  the audit log
    quanedge fleet alerts list|ack ...                       alerts: seq gaps, ... (cli_alerts)
    quanedge fleet command send|list|show ...                commands to boxes (cli_commands)
    quanedge fleet export --since T --format csv > f.csv     readings across boxes (cli_export)
    quanedge fleet box pending|admit|reject|revoke ...       admission and decommission (cli_boxes)
    quanedge fleet broker init ...                           the broker's bridge account (cli_boxes)

Imported only when `quanedge fleet` is called (the root CLI in quanedge/cli.py loads groups lazily),
so a box never imports the server stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from core.cli import fail as _fail
from core.cli import setup_logging as _setup_logging
from core.errors import QuanedgeError
from fleet_server.cli_admin import register as register_admin_commands
from fleet_server.cli_alerts import register as register_alert_commands
from fleet_server.cli_commands import register as register_command_commands
from fleet_server.cli_export import register as register_export_command
from fleet_server.cli_quarantine import build_quarantine_app

__all__ = ["build_app"]


def build_app() -> typer.Typer:
    app = typer.Typer(help="Run and administer the fleet server.", no_args_is_help=True)

    @app.command("serve")
    def serve(
        db: str = typer.Option("var/fleet.db", help="SQLite database file (the embedded default), or a "
                               "PostgreSQL URL (postgresql://user@host:5432/fleet) for replicas on one database."),
        host: str = typer.Option("127.0.0.1"),
        port: int = typer.Option(8080),
        admin_token: str = typer.Option(..., envvar="QUANEDGE_ADMIN_TOKEN", help="Bearer token for admin calls."),
        mqtt_host: Optional[str] = typer.Option(None, help="Broker to take telemetry from (none: HTTP only)."),
        mqtt_port: int = typer.Option(1883),
        mqtt_username: Optional[str] = typer.Option(None, help="The bridge's broker account."),
        mqtt_password: Optional[str] = typer.Option(None, envvar="QUANEDGE_MQTT_PASSWORD"),
        mqtt_tls: bool = typer.Option(False, help="Connect to the broker over TLS."),
        mqtt_ca_file: Optional[str] = typer.Option(None, help="CA bundle that signed the broker's certificate."),
        mqtt_cert_file: Optional[str] = typer.Option(None, help="Client certificate (mutual TLS)."),
        mqtt_key_file: Optional[str] = typer.Option(None),
        mqtt_client_id: Optional[str] = typer.Option(
            None, help="The bridge's whole MQTT client id (default quanedge-fleet-<prefix>@<replica id>); "
            "each replica needs its own."),
        replica_id: Optional[str] = typer.Option(
            None, "--replica-id", envvar="QUANEDGE_REPLICA_ID",
            help="This replica's id, unique among the fleet's replicas and stable across its restarts: its MQTT "
            "session is quanedge-fleet-<prefix>@<replica id>, and it names the replica in the periodic jobs' "
            "leases and /healthz (default: <host name>-<port>)."),
        mqtt_share_group: str = typer.Option(
            "quanedge-fleet", help="Shared-subscription group: replicas in one group split the boxes' messages."),
        mqtt_session_expiry: int = typer.Option(
            3600, "--mqtt-session-expiry", help="Seconds the broker keeps this replica's session (and queues "
            "its share) while it is down; 4294967295 = never."),
        broker_admin_username: Optional[str] = typer.Option(
            None, envvar="QUANEDGE_BROKER_ADMIN_USERNAME",
            help="dynsec admin account: give each enrolled box its own broker account (deploy/mosquitto)."),
        broker_admin_password: Optional[str] = typer.Option(None, envvar="QUANEDGE_BROKER_ADMIN_PASSWORD"),
        mqtt_public_host: Optional[str] = typer.Option(None, help="Broker host boxes are told at enrolment."),
        mqtt_public_port: Optional[int] = typer.Option(None, help="Broker port boxes are told at enrolment."),
        mqtt_public_tls: bool = typer.Option(False, help="Tell boxes the broker wants TLS."),
        tls_cert: Optional[str] = typer.Option(None, "--tls-cert", help="Serve HTTPS with this certificate (PEM)."),
        tls_key: Optional[str] = typer.Option(None, "--tls-key", help="The certificate's private key (PEM)."),
        topic_prefix: str = typer.Option("quanedge"),
        tuf_repo: Optional[Path] = typer.Option(None, "--tuf-repo", help="Update repository to serve at /tuf/ "
                                                "(made with `quanedge manifest init`); enables rollouts."),
        tuf_keys: Optional[Path] = typer.Option(None, "--tuf-keys", help="Online snapshot/timestamp keys "
                                                "(default: <repo>/keys)."),
        checkin_interval: int = typer.Option(60, "--checkin-interval", help="Seconds between box check-ins."),
        public_url: Optional[str] = typer.Option(None, "--public-url", help="How boxes reach this server."),
        retention_routine_days: Optional[int] = typer.Option(
            None, "--retention-routine-days", help="Days routine readings are kept (default 90). PostgreSQL only: "
            "whole daily partitions are dropped; the SQLite store keeps every reading."),
        retention_event_days: Optional[int] = typer.Option(
            None, "--retention-event-days", help="Days event readings are kept (default 365; PostgreSQL only)."),
        retention_alarm_days: Optional[int] = typer.Option(
            None, "--retention-alarm-days", help="Days alarm readings are kept (default 730; PostgreSQL only)."),
        alert_webhook: Optional[str] = typer.Option(
            None, "--alert-webhook", envvar="QUANEDGE_ALERT_WEBHOOK",
            help="POST every alert event (raised, acknowledged, resolved) as JSON to this http(s) URL, retried "
            "with backoff while it is down."),
        alert_silent_minutes: Optional[float] = typer.Option(
            None, "--alert-silent-minutes", help="Alert when a box is not heard from for this long (default 15)."),
        alert_alarm_quiet_minutes: Optional[float] = typer.Option(
            None, "--alert-alarm-quiet-minutes", help="An ALARM reading's alert resolves after this long without "
            "another alarm of that point (default 60), or at once when a normal reading of it comes."),
        alert_rules_interval: Optional[float] = typer.Option(
            None, "--alert-rules-interval", help="Seconds between evaluations of the alert rules (default 30)."),
        verbose: bool = typer.Option(False, "--verbose", "-v"),
    ) -> None:
        """Serve the fleet API (and the MQTT bridge when a broker is given)."""
        from fleet_server.server import serve as serve_fleet
        from fleet_server.settings import ServerSettings

        _setup_logging(verbose)
        given: dict[str, Any] = {key: value for key, value in (
            ("retention_days_routine", retention_routine_days),
            ("retention_days_event", retention_event_days), ("retention_days_alarm", retention_alarm_days),
            ("alert_webhook", alert_webhook), ("alert_silent_minutes", alert_silent_minutes),
            ("alert_alarm_quiet_minutes", alert_alarm_quiet_minutes), ("alert_rules_s", alert_rules_interval),
        ) if value is not None}  # the others keep ServerSettings' defaults
        try:
            settings = ServerSettings(db_path=db, admin_token=admin_token, host=host, port=port,
                                      mqtt_host=mqtt_host, mqtt_port=mqtt_port, topic_prefix=topic_prefix,
                                      mqtt_username=mqtt_username, mqtt_password=mqtt_password, mqtt_tls=mqtt_tls,
                                      mqtt_ca_file=mqtt_ca_file, mqtt_cert_file=mqtt_cert_file,
                                      mqtt_key_file=mqtt_key_file, mqtt_client_id=mqtt_client_id,
                                      replica_id=replica_id, mqtt_share_group=mqtt_share_group,
                                      mqtt_session_expiry_s=mqtt_session_expiry,
                                      broker_admin_username=broker_admin_username,
                                      broker_admin_password=broker_admin_password,
                                      mqtt_public_host=mqtt_public_host, mqtt_public_port=mqtt_public_port,
                                      mqtt_public_tls=mqtt_public_tls, tls_cert_file=tls_cert, tls_key_file=tls_key,
                                      tuf_repo_dir=tuf_repo, tuf_keys_dir=tuf_keys,
                                      checkin_interval_s=checkin_interval, public_url=public_url, **given)
            serve_fleet(settings)
        except QuanedgeError as exc:
            _fail(exc)

    @app.command("token")
    def token(server: str = typer.Option("http://127.0.0.1:8080"),
              admin_token: str = typer.Option(..., envvar="QUANEDGE_ADMIN_TOKEN"),
              ttl_s: int = typer.Option(3600), max_uses: int = typer.Option(1),
              note: str = typer.Option("")) -> None:
        """Create an enrollment token (print it) for installers."""
        import httpx

        try:
            r = httpx.post(server.rstrip("/") + "/api/v1/enrollment-tokens",
                           headers={"Authorization": f"Bearer {admin_token}"},
                           json={"ttl_s": ttl_s, "max_uses": max_uses, "note": note}, timeout=10)
        except httpx.HTTPError as exc:
            _fail(OSError(f"cannot reach {server}: {exc}"))
        if r.status_code != 200:
            _fail(RuntimeError(f"server refused ({r.status_code}): {r.text[:300]}"))
        typer.echo(r.json()["token"])

    app.add_typer(build_quarantine_app(), name="quarantine")
    register_admin_commands(app)   # user create|list|rotate|revoke, audit
    register_alert_commands(app)   # alerts list|ack
    register_command_commands(app)  # command send|list|show
    register_export_command(app)   # export
    from fleet_server.cli_boxes import register
    register(app)  # box pending|admit|reject|revoke, broker init
    return app
