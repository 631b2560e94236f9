"""Box configuration: one TOML file, validated once at load into frozen, typed objects.

Every error names the file, the dotted key, the bad value and what was expected, and the agent
does not start half-way: `load_config` either returns a complete `AgentConfig` or raises.

    [box]        id, site, hardware, tags, data_dir
    [buffer]     max_bytes, ttl_s, alarm_ttl_s, commit_max_rows, commit_max_delay_ms
    [uplink]     kind = "mqtt" | "http", batch_size, [uplink.mqtt] / [uplink.http]; absent: HTTP to
                 the server this box enrolled with
    [health]     listen = "127.0.0.1:9108", enabled
    [[bus]]      name, kind = "rtu" | "tcp", serial: port, baudrate, parity, stopbits, bytesize;
                 tcp: host, port; timeout_ms
    [[device]]   name, kind (default "modbus"), poll_s, points, allow_commands, and per kind:
                 the rest per kind: each kind's settings parser (drivers/<kind>/settings.py,
                 registered in drivers/registry.py)
    [[model]]    edge models (see agent.inference)
    [[junction]] pattern-change policy of a signal controller (see agent.traffic_control)
    [updater]    OTA updates (see agent.updater.config); absent: updates disabled
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.buffer import MIN_MAX_BYTES, BufferSettings
from core.config_reader import NAME_RE, Table, load_toml, parse_size
from core.errors import ConfigError
from drivers.kind import DeviceSettings, ParseContext
from drivers.modbus.settings import DeviceConfig
from drivers.registry import KINDS

_URL_RE = re.compile(r"^https?://[^\s/]+(/.*)?$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_/-]+$")


@dataclass(frozen=True, slots=True)
class BoxConfig:
    id: str
    site: str
    hardware: str
    tags: tuple[str, ...]
    data_dir: Path


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """[uplink.mqtt]. Without username/password the box connects with the MQTT account it got at
    enrolment (stored beside its credential); set them only for a broker managed by hand."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    topic_prefix: str = "quanedge"
    keepalive_s: int = 30
    ack: str = "fleet"          # "fleet": rows leave the buffer once the fleet server stored them; "broker": on PUBACK
    ack_timeout_s: float = 30.0
    window: int = 4


@dataclass(frozen=True, slots=True)
class HttpConfig:
    server: str | None = None  # None: the server recorded at enrollment
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    kind: str  # "mqtt" | "http"
    batch_size: int = 1000
    mqtt: MqttConfig | None = None
    http: HttpConfig | None = None


@dataclass(frozen=True, slots=True)
class HealthConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True, slots=True)
class BusConfig:
    name: str
    kind: str  # "rtu" | "tcp"
    port: str | None = None       # serial device path (rtu)
    host: str | None = None       # tcp
    tcp_port: int | None = None   # tcp
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 0.2


#: a [[device]]'s settings: the frozen object its kind's parser returns (drivers.kind.DeviceSettings)
AnyDeviceConfig = DeviceSettings
DEVICE_KINDS = tuple(KINDS)
__all__ = ["AgentConfig", "AnyDeviceConfig", "BoxConfig", "BusConfig", "DeviceConfig", "HealthConfig", "HttpConfig",
           "MqttConfig", "UplinkConfig", "load_config"]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    path: Path
    box: BoxConfig
    buffer: BufferSettings
    uplink: UplinkConfig
    health: HealthConfig
    buses: tuple[BusConfig, ...]
    devices: tuple[AnyDeviceConfig, ...]
    models: tuple[Any, ...] = field(default=())  # agent.inference.ModelSpec
    junctions: tuple[Any, ...] = field(default=())  # agent.traffic_control.JunctionPolicy
    updater: Any = None  # agent.updater.config.UpdaterConfig (disabled when [updater] is absent)
    # device -> its agent.alarms.AlarmRule tuple ([[device.alarm]])
    alarms: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @property
    def credential_path(self) -> Path:
        return self.box.data_dir / "credential.json"

    @property
    def control_token_path(self) -> Path:
        """Written by the running agent; `quanedge agent command` presents it (agent.commands)."""
        return self.box.data_dir / "control.token"

    def device(self, name: str) -> AnyDeviceConfig | None:
        return next((d for d in self.devices if d.name == name), None)


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    p = Path(path)
    file = str(p)
    root = load_toml(p, "config file")
    base_dir = p.resolve().parent
    box = _box(root.table("box", required=True), base_dir)
    buffer = _buffer(root.table("buffer"), box, file)
    # No [uplink]: HTTP to the server this box enrolled with (the embedded default).
    uplink = _uplink(root.table("uplink") or Table({"kind": "http"}, file, "uplink"), base_dir)
    health = _health(root.table("health"))
    buses = tuple(_bus(t) for t in root.tables("bus"))
    _unique(buses, "bus", file)
    parsed = [_device(t, {b.name: b for b in buses}, base_dir) for t in root.tables("device")]
    devices = tuple(dev for dev, _ in parsed)
    alarms = {dev.name: rules for dev, rules in parsed if rules}
    _unique(devices, "device", file)
    _unique_units(devices, file)
    _check_exclusive(devices, {b.name: b.port for b in buses if b.kind == "rtu" and b.port},
                     (health.host, health.port) if health.enabled and health.port else None, file)
    model_tables = root.raw("model", [])
    models: tuple[Any, ...] = ()
    if model_tables:
        from agent.inference import parse_model_specs  # only boxes that run models pay for it

        models = tuple(parse_model_specs(model_tables, file))
    junction_tables = root.raw("junction", [])
    junctions: tuple[Any, ...] = ()
    if junction_tables:
        from agent.traffic_control import parse_junctions

        junctions = parse_junctions(junction_tables, {d.name: d for d in devices}, file)
    from agent.updater.config import parse_updater

    updater = parse_updater(root.table("updater"), data_dir=box.data_dir, base_dir=base_dir)
    root.reject_unknown()
    return AgentConfig(p, box, buffer, uplink, health, buses, devices, models, junctions, updater, alarms)


def _box(t: Table, base_dir: Path) -> BoxConfig:
    box_id = t.str("id", pattern=NAME_RE, expected="1-64 chars of letters, digits, '.', '_' or '-'")
    site = t.str("site", "default")
    hardware = t.str("hardware", "generic")
    tags = t.str_list("tags", [])
    data_dir = Path(t.str("data_dir", f"var/{box_id}"))
    t.reject_unknown()
    return BoxConfig(box_id, site, hardware, tags, data_dir if data_dir.is_absolute() else base_dir / data_dir)


def _buffer(t: Table | None, box: BoxConfig, file: str) -> BufferSettings:
    t = t or Table({}, file, "buffer")
    max_bytes = parse_size(t, "max_bytes", 256 * 1024 * 1024)
    if max_bytes < MIN_MAX_BYTES:
        raise t.error("max_bytes", "too small for a buffer", max_bytes, "at least 1MiB")
    settings = BufferSettings(
        path=box.data_dir / "buffer.db",
        max_bytes=max_bytes,
        ttl_s=t.float("ttl_s", 7 * 86400.0, min=1, exclusive_min=False),
        alarm_ttl_s=t.float("alarm_ttl_s", 30 * 86400.0, min=1),
        commit_max_rows=t.int("commit_max_rows", 5000, min=1, max=100_000),
        commit_max_delay_s=t.float("commit_max_delay_ms", 0.0, min=0, max=1000) / 1000.0,
    )
    t.reject_unknown()
    return settings


def _uplink(t: Table, base_dir: Path) -> UplinkConfig:
    kind = t.str("kind", choices=("mqtt", "http"))
    batch_size = t.int("batch_size", 1000, min=1, max=10_000)
    mqtt_t, http_t = t.table("mqtt"), t.table("http")
    mqtt = http = None
    if kind == "mqtt":
        if mqtt_t is None:
            raise t.error("mqtt", "uplink kind is mqtt but the section is missing", None,
                          "an [uplink.mqtt] table with host")
        mqtt = _mqtt(mqtt_t, base_dir)
    if http_t is not None or kind == "http":
        http_t = http_t or Table({}, t.file, f"{t.key}.http")
        http = HttpConfig(
            server=http_t.str("server", None, pattern=_URL_RE, expected="an http:// or https:// URL"),
            timeout_s=http_t.float("timeout_s", 10.0, min=0.1, max=300),
        )
        http_t.reject_unknown()
    # An [uplink.http] beside kind = "mqtt" is allowed: it names the server used for enrollment.
    t.reject_unknown()
    return UplinkConfig(kind, batch_size, mqtt, http)




def _mqtt(t: Table, base_dir: Path) -> MqttConfig:
    def file_opt(name: str) -> str | None:
        v = t.str(name, None)
        if v is None:
            return None
        fp = Path(v) if Path(v).is_absolute() else base_dir / v
        if not fp.is_file():
            raise t.error(name, "file not found", str(fp), "an existing PEM file")
        return str(fp)

    cfg = MqttConfig(
        host=t.str("host"),
        port=t.int("port", 1883, min=1, max=65535),
        username=t.str("username", None),
        password=t.str("password", None),
        tls=t.bool("tls", False),
        ca_file=file_opt("ca_file"),
        cert_file=file_opt("cert_file"),
        key_file=file_opt("key_file"),
        topic_prefix=t.str("topic_prefix", "quanedge", pattern=_TOPIC_RE,
                           expected="letters, digits, '_', '-', '/' (no MQTT wildcards)"),
        keepalive_s=t.int("keepalive_s", 30, min=5, max=3600),
        ack=t.str("ack", "fleet", choices=("fleet", "broker")),
        ack_timeout_s=t.float("ack_timeout_s", 30.0, min=1.0, max=3600.0),
        window=t.int("window", 4, min=1, max=64),
    )
    if cfg.password is not None and cfg.username is None:
        raise t.error("password", "a password needs a username", "***", "username set as well")
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise t.error("cert_file", "client certificate and key go together", cfg.cert_file,
                      "both cert_file and key_file")
    t.reject_unknown()
    return cfg


def _health(t: Table | None) -> HealthConfig:
    if t is None:
        return HealthConfig()
    enabled = t.bool("enabled", True)
    listen = t.str("listen", "127.0.0.1:9108")
    host, _, port_s = listen.rpartition(":")
    if not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise t.error("listen", "invalid listen address", listen,
                      '"HOST:PORT", e.g. "127.0.0.1:9108" (port 0 = any free)')
    t.reject_unknown()
    return HealthConfig(enabled, host, int(port_s))


def _bus(t: Table) -> BusConfig:
    name = t.str("name", pattern=NAME_RE, expected="1-64 chars of letters, digits, '.', '_' or '-'")
    kind = t.str("kind", choices=("rtu", "tcp"))
    timeout_s = t.int("timeout_ms", 200, min=10, max=10_000) / 1000.0
    if kind == "rtu":
        cfg = BusConfig(
            name, kind, port=t.str("port", expected="a serial device path, e.g. /dev/ttyUSB0"),
            baudrate=t.int("baudrate", 9600, min=300, max=921600),
            parity=t.str("parity", "N", choices=("N", "E", "O")),
            stopbits=t.int("stopbits", 1, min=1, max=2),
            bytesize=t.int("bytesize", 8, min=7, max=8),
            timeout_s=timeout_s,
        )
    else:
        cfg = BusConfig(name, kind, host=t.str("host"), tcp_port=t.int("port", 502, min=1, max=65535),
                        timeout_s=timeout_s)
    t.reject_unknown()
    return cfg


def _device(t: Table, buses: dict[str, BusConfig], base_dir: Path) -> tuple[AnyDeviceConfig, tuple[Any, ...]]:
    kind = t.str("kind", "modbus", choices=DEVICE_KINDS)
    cfg = KINDS[kind].parse(t, ParseContext(base_dir, buses))
    alarms = _alarms(t, cfg)
    t.reject_unknown()
    return cfg, alarms


def _alarms(t: Table, dev: AnyDeviceConfig) -> tuple[Any, ...]:
    """[[device.alarm]]: threshold alarms with hysteresis on the device's points (agent.alarms)."""
    tables = t.tables("alarm")
    if not tables:
        return ()
    points = KINDS[dev.kind].point_names(dev)
    if points is None:
        raise t.error("alarm", f"a {dev.kind} device's points are not known before it runs", None,
                      "list the points the alarms watch in this device's `points`")
    from agent.alarms import parse_alarm_rules

    return parse_alarm_rules(tables, points, t.file)


def _unique(items: tuple[Any, ...], what: str, file: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.name in seen:
            raise ConfigError(f"duplicate {what} name", file=file, key=f"{what}[{i}].name", value=item.name,
                              expected=f"a name no other [[{what}]] uses")
        seen.add(item.name)


def _unique_units(devices: tuple[AnyDeviceConfig, ...], file: str) -> None:
    """Two slaves with one address on one RS-485 bus answer together and garble both replies."""
    seen: dict[tuple[str, int], str] = {}
    for i, d in enumerate(devices):
        if not isinstance(d, DeviceConfig):
            continue
        key = (d.bus, d.unit)
        if key in seen:
            raise ConfigError(f"unit id already used by device {seen[key]!r} on bus {d.bus!r}", file=file,
                              key=f"device[{i}].unit", value=d.unit, expected="a unit id unique on its bus")
        seen[key] = d.name


def _check_exclusive(devices: tuple[AnyDeviceConfig, ...], rtu_ports: dict[str, str],
                     health: tuple[str, int] | None, file: str) -> None:
    """One owner per serial port (a [[bus]] or one device); one listener per TCP port."""
    owners = {os.path.realpath(port): f"[[bus]] {bus!r}" for bus, port in rtu_ports.items()}
    listeners: list[tuple[str, int, str]] = [(health[0], health[1], "[health] listen")] if health else []
    for i, d in enumerate(devices):
        kind = KINDS[d.kind]
        port = kind.serial_port(d)
        if port is not None:
            real = os.path.realpath(port)
            if real in owners:
                raise ConfigError(f"serial port already used by {owners[real]}: a serial line has one master",
                                  file=file, key=f"device[{i}].port", value=port,
                                  expected="a port no other device or bus uses")
            owners[real] = f"device {d.name!r}"
        address = kind.listen_address(d)
        if address is not None and address[1]:
            host, tcp_port = address
            for other_host, other_port, who in listeners:
                wildcard = "0.0.0.0" in (host, other_host) or "::" in (host, other_host)
                if other_port == tcp_port and (host == other_host or wildcard):
                    raise ConfigError(f"listen port already used by {who}", file=file, key=f"device[{i}].listen",
                                      value=f"{host}:{tcp_port}", expected="a port nothing else on this box listens on")
            listeners.append((host, tcp_port, f"device {d.name!r}"))
