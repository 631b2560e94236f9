"""The fleet server's settings: one frozen, validated value handed to every component.

Bad combinations fail here, at construction, with a `ConfigError` naming the key, the value and
what was expected, never later inside a request or the MQTT bridge.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from core.errors import ConfigError
from fleet_server.alert_rules import Thresholds

__all__ = ["ServerSettings", "default_replica_id"]

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: The client ids the broker binds to boxes (`fleet_server.broker.acl.box_client_id`): a bridge
#: connecting with one would take over that box's session.
_BOX_CLIENT_IDS = "quanedge-agent-"
#: MQTT v5 Session Expiry Interval: 0xFFFFFFFF means "never expires".
_SESSION_NEVER_EXPIRES = 0xFFFFFFFF


def default_replica_id(port: int) -> str:
    """`<host name>-<HTTP port>`: stable across restarts of one replica, different for two replicas
    on one host (they cannot listen on the same port) and, host names being unique, across hosts."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-.") or "host"
    suffix = f"-{port}"
    return host[:64 - len(suffix)] + suffix


@dataclass(frozen=True, slots=True)
class ServerSettings:
    db_path: Path | str
    admin_token: str = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    # MQTT bridge: off unless mqtt_host is set.
    mqtt_host: str | None = None
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    mqtt_tls: bool = False
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    # The bridge's MQTT client id, i.e. its persistent session on the broker (its subscriptions and
    # the QoS 1 telemetry queued for it while this server is down). None (the default): derived from
    # topic_prefix and replica_id (see `mqtt_session_id`), so servers on different prefixes never
    # share a session and neither do two replicas on one prefix. Given: used as is (each replica
    # then needs its own).
    mqtt_client_id: str | None = None
    # This replica of the fleet server: its MQTT session and its name in the leases of the periodic
    # jobs (fleet_server.leases) and /healthz. None: `default_replica_id(port)` (host name + port).
    replica_id: str | None = None
    # The MQTT v5 shared-subscription group the replicas split telemetry and status in; every
    # replica of one fleet uses the same group (the broker hands each message to ONE member).
    mqtt_share_group: str = "quanedge-fleet"
    # How long the broker keeps a replica's session (and queues its share for it) after it
    # disconnected; 4294967295 = never expires. A replica gone for good stops taking a share after this.
    mqtt_session_expiry_s: int = 3600
    # Box accounts on the broker (dynamic-security plugin): the admin account the server manages them
    # with over $CONTROL. None: boxes get no MQTT identity at enrolment (HTTP-only fleet).
    broker_admin_username: str | None = None
    broker_admin_password: str | None = field(default=None, repr=False)
    broker_timeout_s: float = 5.0
    # What boxes are told at enrolment (how THEY reach the broker); default: no host/port hint.
    mqtt_public_host: str | None = None
    mqtt_public_port: int | None = None
    mqtt_public_tls: bool = False
    # HTTPS for the fleet API itself (uvicorn ssl); both or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    mqtt_backoff_base_s: float = 0.5
    mqtt_backoff_cap_s: float = 30.0
    topic_prefix: str = "quanedge"
    # Telemetry limits.
    max_batch: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    max_page: int = 10_000
    # Rollouts and updates (issue 4).
    checkin_interval_s: int = 60          # the poll interval boxes are told in every check-in
    tuf_repo_dir: Path | str | None = None   # served read-only at /tuf/ (metadata/, targets/)
    tuf_keys_dir: Path | str | None = None   # online keys (snapshot, timestamp); default <repo>/keys
    tuf_key_passphrase: str | None = None
    tuf_check_s: float = 60.0             # how often to check whether the timestamp needs re-signing
    public_url: str | None = None         # how boxes reach this server (repo_url); default: request's host
    rollout_sweep_s: float = 1.0          # per-box timeouts and counter refresh period
    access_log: bool = False              # one log line per request (costly at thousands of check-ins/s)
    # Days readings are kept, per class (PostgreSQL only: whole daily partitions are dropped by
    # the "readings-upkeep" job; the SQLite store keeps everything).
    retention_days_routine: int = 90
    retention_days_event: int = 365
    retention_days_alarm: int = 730
    # Alerts (fleet_server.alert_rules, alert_webhook): where every alert event is POSTed (None:
    # nowhere), the rules' thresholds, how often the "alert-rules" job runs, and how many events
    # wait for an unreachable webhook before the oldest are dropped.
    alert_webhook: str | None = None
    alert_silent_minutes: float = 15.0       # box_silent: not heard from for this long
    alert_alarm_quiet_minutes: float = 60.0  # alarm_reading: resolved after this long without another alarm
    alert_unsent_minutes: float = 30.0       # unsent_backlog: oldest unsent reading this old (fed later)
    alert_disk_pct: float = 90.0             # disk_full: disk used above this percentage (fed later)
    alert_offline_minutes: float = 15.0      # device_offline: no good read for this long (fed later)
    alert_rules_s: float = 30.0
    alert_outbox_max: int = 100_000

    def __post_init__(self) -> None:
        if not str(self.db_path):
            raise ConfigError("db_path must not be empty", key="db_path", value=self.db_path)
        if not isinstance(self.admin_token, str) or len(self.admin_token) < 16:
            # The value is a secret: never echo it.
            raise ConfigError(
                "admin_token is too short", key="admin_token",
                expected="a random string of at least 16 characters",
            )
        for key in ("port", "mqtt_port"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
                raise ConfigError("bad port", key=key, value=value, expected="an integer 0..65535")
        for key in ("max_batch", "max_body_bytes", "max_page"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError("bad limit", key=key, value=value, expected="a positive integer")
        self._check_mqtt()
        self._check_broker_and_tls()
        self._check_rollouts()
        self._check_replicas_and_retention()
        self._check_alerts()

    def _check_replicas_and_retention(self) -> None:
        for cls in ("routine", "event", "alarm"):
            key = f"retention_days_{cls}"
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"bad retention for {cls} readings (--retention-{cls}-days)", key=key,
                                  value=value, expected="a whole number of days, at least 1")

    def _check_alerts(self) -> None:
        url = self.alert_webhook
        if url is not None:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(
                    ch.isspace() for ch in url):
                raise ConfigError("bad alert webhook URL (--alert-webhook)", key="alert_webhook", value=url,
                                  expected="an http:// or https:// URL with a host")
        for key in ("alert_silent_minutes", "alert_alarm_quiet_minutes", "alert_unsent_minutes",
                    "alert_offline_minutes", "alert_rules_s"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 10**6:
                raise ConfigError(f"bad alert setting (--{key.replace('_', '-')})", key=key, value=value,
                                  expected="a positive number, at most 1000000")
        if (not isinstance(self.alert_disk_pct, (int, float)) or isinstance(self.alert_disk_pct, bool)
                or not 0 < self.alert_disk_pct < 100):
            raise ConfigError("bad alert setting (--alert-disk-pct)", key="alert_disk_pct",
                              value=self.alert_disk_pct, expected="a percentage, 0 < pct < 100")
        value = self.alert_outbox_max
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError("bad alert setting (--alert-outbox-max)", key="alert_outbox_max", value=value,
                              expected="a positive integer")

    @property
    def alert_thresholds(self) -> Thresholds:
        """The rules' thresholds in seconds (fleet_server.alert_rules)."""
        return Thresholds(silent_s=self.alert_silent_minutes * 60, alarm_quiet_s=self.alert_alarm_quiet_minutes * 60,
                          unsent_s=self.alert_unsent_minutes * 60, disk_pct=self.alert_disk_pct,
                          offline_s=self.alert_offline_minutes * 60)

    @property
    def retention_days(self) -> dict[str, int]:
        """{reading class: days kept}, as `PgStore.upkeep` takes it."""
        return {"routine": self.retention_days_routine, "event": self.retention_days_event,
                "alarm": self.retention_days_alarm}

    def _check_rollouts(self) -> None:
        value = self.checkin_interval_s
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 86400:
            raise ConfigError("bad check-in interval", key="checkin_interval_s", value=value,
                              expected="an integer number of seconds 1..86400")
        for key in ("tuf_check_s", "rollout_sweep_s"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 86400:
                raise ConfigError("bad period", key=key, value=value, expected="seconds, 0 < s <= 86400")
        if self.public_url is not None and not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", self.public_url):
            raise ConfigError("bad public URL", key="public_url", value=self.public_url,
                              expected="http(s)://host[:port][/path]")
        if self.tuf_repo_dir is not None and not (Path(self.tuf_repo_dir) / "repo.json").is_file():
            raise ConfigError("not an update repository", key="tuf_repo_dir", value=str(self.tuf_repo_dir),
                              expected="a directory made by `quanedge manifest init` (with repo.json)")
        if self.tuf_keys_dir is not None and self.tuf_repo_dir is None:
            raise ConfigError("tuf_keys_dir is set without tuf_repo_dir", key="tuf_keys_dir",
                              expected="tuf_repo_dir as well")

    def _check_mqtt(self) -> None:
        prefix = self.topic_prefix
        if (
            not prefix or prefix.startswith("/") or prefix.endswith("/")
            or any(ch in prefix for ch in "+#\x00") or "//" in prefix
        ):
            raise ConfigError(
                "bad MQTT topic prefix", key="topic_prefix", value=prefix,
                expected="a non-empty topic without wildcards (+ #) or leading/trailing '/'",
            )
        self._check_mqtt_identity()
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ConfigError(
                "mqtt_password is set without mqtt_username", key="mqtt_username",
                expected="a user name whenever a password is given",
            )
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ConfigError(
                "client certificate and key must be given together",
                key="mqtt_cert_file" if self.mqtt_cert_file is None else "mqtt_key_file",
                expected="both mqtt_cert_file and mqtt_key_file, or neither",
            )
        uses_tls_files = any((self.mqtt_ca_file, self.mqtt_cert_file))
        if uses_tls_files and not self.mqtt_tls:
            raise ConfigError(
                "TLS files are set but mqtt_tls is false", key="mqtt_tls", value=self.mqtt_tls,
                expected="mqtt_tls = true when mqtt_ca_file / mqtt_cert_file are set",
            )
        if not 0 < self.mqtt_backoff_base_s <= self.mqtt_backoff_cap_s:
            raise ConfigError(
                "bad MQTT reconnect backoff", key="mqtt_backoff_base_s",
                value=(self.mqtt_backoff_base_s, self.mqtt_backoff_cap_s),
                expected="0 < mqtt_backoff_base_s <= mqtt_backoff_cap_s",
            )

    def _check_mqtt_identity(self) -> None:
        for key in ("mqtt_client_id", "replica_id"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not _CLIENT_ID.fullmatch(value)):
                raise ConfigError(f"bad {key.replace('_', ' ')} (--{key.replace('_', '-')})", key=key, value=value,
                                  expected="1-64 characters [A-Za-z0-9._-]")
        if self.mqtt_client_id is not None and self.replica_id is not None:
            raise ConfigError(
                "both mqtt_client_id and replica_id are set", key="replica_id", value=self.replica_id,
                expected="one of them: mqtt_client_id is the bridge's whole client id, replica_id derives it",
            )
        if self.mqtt_client_id is not None and self.mqtt_client_id.startswith(_BOX_CLIENT_IDS):
            raise ConfigError(
                "the bridge would take over a box's session", key="mqtt_client_id", value=self.mqtt_client_id,
                expected=f"a client id not starting with {_BOX_CLIENT_IDS!r} (the boxes' client ids)",
            )
        group = self.mqtt_share_group
        if (not isinstance(group, str) or not 1 <= len(group) <= 64
                or any(ch in group for ch in "/+#\x00") or group != group.strip()):
            raise ConfigError(
                "bad MQTT shared-subscription group", key="mqtt_share_group", value=group,
                expected="1-64 characters, no '/', '+', '#' and no leading/trailing blanks",
            )
        value = self.mqtt_session_expiry_s
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _SESSION_NEVER_EXPIRES:
            raise ConfigError(
                "bad MQTT session expiry", key="mqtt_session_expiry_s", value=value,
                expected=f"seconds, 1..{_SESSION_NEVER_EXPIRES} ({_SESSION_NEVER_EXPIRES} = never expires)",
            )

    def _check_broker_and_tls(self) -> None:
        if (self.broker_admin_username is None) != (self.broker_admin_password is None):
            raise ConfigError("the broker admin account needs a username and a password",
                              key="broker_admin_password" if self.broker_admin_password is None
                              else "broker_admin_username", expected="both, or neither")
        if self.broker_admin_username is not None and self.mqtt_host is None:
            raise ConfigError("broker admin account given without a broker", key="mqtt_host",
                              expected="mqtt_host set whenever broker_admin_username is")
        if not isinstance(self.broker_timeout_s, (int, float)) or not 0 < self.broker_timeout_s <= 60:
            raise ConfigError("bad broker timeout", key="broker_timeout_s", value=self.broker_timeout_s,
                              expected="seconds, 0 < s <= 60")
        port = self.mqtt_public_port
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
            raise ConfigError("bad port", key="mqtt_public_port", value=port, expected="an integer 1..65535")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("HTTPS needs a certificate and its key", key="tls_key_file"
                              if self.tls_key_file is None else "tls_cert_file", expected="both, or neither")
        for key in ("tls_cert_file", "tls_key_file"):
            value = getattr(self, key)
            if value is not None and not Path(value).is_file():
                raise ConfigError("file not found", key=key, value=str(value), expected="an existing PEM file")

    @property
    def broker_accounts_enabled(self) -> bool:
        return self.broker_admin_username is not None

    @property
    def mqtt_enabled(self) -> bool:
        return self.mqtt_host is not None

    @property
    def replica(self) -> str:
        """This replica's id: `replica_id`, or `default_replica_id(port)`."""
        return self.replica_id if self.replica_id is not None else default_replica_id(self.port)

    @property
    def mqtt_session_id(self) -> str:
        """The MQTT client id the bridge connects with: `mqtt_client_id`, or
        `quanedge-fleet-<prefix>@<replica>` ('/' in the prefix written '.'; a replica id has no '@')."""
        if self.mqtt_client_id is not None:
            return self.mqtt_client_id
        return f"quanedge-fleet-{self.topic_prefix.replace('/', '.')}@{self.replica}"

    @property
    def mqtt_share_filters(self) -> tuple[str, str]:
        """The bridge's subscriptions: telemetry and status of every box, shared in `mqtt_share_group`."""
        shared = f"$share/{self.mqtt_share_group}/{self.topic_prefix}/+/"
        return shared + "telemetry", shared + "status"
