"""The [[device]] kinds other than Modbus: one frozen config object and one parser per kind.

Every [[device]] has `name`, `kind`, `poll_s`, `points` and `allow_commands`; the rest depends on
the kind (tests/test_devices_config.py holds a TOML example of each):

    wxt_serial         port, mode = "ascii" | "nmea", address, baudrate, parity, bytesize, stopbits, timeout_ms
    ntcip              host, port, community, write_community, timeout_ms, retries, phases, detectors,
                       patterns, pattern_time_unit = "s" | "ds", allowed_patterns, allow_standby/free/flash
    gbt20999           host, port, centre, controller_id, road, timeout_ms, heartbeat_s, detectors, plans,
                       allowed_plans, allowed_stages, allowed_modes (codes or names)
    plate_camera       listen (default "127.0.0.1:8080"), cameras = [{serial, secret, user, sources}] (required),
                       allow_list / deny_list (inline list or a file path), relay,
                       heartbeat_timeout_s, [device.rules] allow_prefixes, min_confidence
    access_controller  url, username, password, auth, doors, timeout_ms, listen (event listener; then
                       event_secret / event_user and/or event_sources are required)

Push receivers authenticate their senders (drivers/push_auth.py): each camera needs a `secret` (the
HTTP Basic password of its push URL; the user name is `user`, default the serial) and/or `sources`
(addresses or networks it pushes from). A camera with neither, or no camera at all, is a config
error: a serial is a name anyone can type, and an empty list must not mean "accept anyone".

Parsing checks what the driver's settings would refuse, here, with the file and key in the
message; the drivers are imported only when the agent builds them (agent/devices.py), so loading a
config never pays for pysnmp or httpx. `allow_commands` may only name commands the kind has.
Cross-device rules (a serial port has one owner; a listen port one listener) are in `check_exclusive`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable

from core.config_reader import NAME_RE, Table
from core.errors import ConfigError
from drivers import gates, ntcip
from drivers.push_auth import PushAuth, PushCredential, parse_sources
from drivers.gbt20999 import MODES
from drivers.gbt20999_driver import point_item
from drivers.wxt_ascii import UNITS as WXT_UNITS

# What each kind's driver accepts in write(); tests/test_devices_config.py pins these to the drivers.
COMMANDS: dict[str, tuple[str, ...]] = {
    "wxt_serial": ("reset_rain", "set_polled_mode"),
    "ntcip": ("set_pattern",),
    "gbt20999": ("set_plan", "set_stage", "set_mode"),
    "plate_camera": ("allow_plate", "revoke_plate"),
    "access_controller": tuple(gates.DOOR_COMMANDS),
}
WXT_POINTS = frozenset(WXT_UNITS) | {"Td", "Pa_inHg", "Dm_magnetic", "Sm_knot"}  # NMEA MDA adds the last four
_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]{1,253}$")
_URL_RE = re.compile(r"^https?://[^\s/?#]+/?$")
_NAME_EXPECTED = "1-64 chars of letters, digits, '.', '_' or '-'"


@dataclass(frozen=True, slots=True)
class WxtSerialDeviceConfig:
    kind: ClassVar[str] = "wxt_serial"
    name: str
    port: str
    mode: str = "ascii"
    address: str = "0"
    baudrate: int = 19200
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    timeout_s: float = 1.0
    poll_s: float = 1.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NtcipDeviceConfig:
    kind: ClassVar[str] = "ntcip"
    name: str
    host: str
    port: int = 161
    community: str = "public"
    write_community: str = "private"
    timeout_s: float = 1.0
    retries: int = 1
    phases: int = 8
    detectors: tuple[int, ...] = ()
    patterns: tuple[int, ...] = ()
    pattern_time_unit: str = "s"
    allowed_patterns: frozenset[int] = frozenset()
    allow_standby: bool = False
    allow_free: bool = False
    allow_flash: bool = False
    poll_s: float = 1.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GbtDeviceConfig:
    kind: ClassVar[str] = "gbt20999"
    name: str
    host: str
    port: int
    centre: int = 1
    controller_id: int = 1
    road: int = 1
    timeout_s: float = 2.0
    heartbeat_s: float = 0.0
    detectors: tuple[int, ...] = ()
    plans: tuple[int, ...] = ()
    allowed_plans: frozenset[int] = frozenset()
    allowed_stages: frozenset[int] = frozenset()
    allowed_modes: frozenset[int] = frozenset()
    poll_s: float = 1.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlateCameraDeviceConfig:
    kind: ClassVar[str] = "plate_camera"
    name: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    allow_list: frozenset[str] = frozenset()
    deny_list: frozenset[str] = frozenset()
    allow_prefixes: tuple[str, ...] = ()
    min_confidence: int = 80
    cameras: tuple[PushCredential, ...] = ()
    relay: int | None = None
    heartbeat_timeout_s: float = 15.0
    poll_s: float = 30.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessControllerDeviceConfig:
    kind: ClassVar[str] = "access_controller"
    name: str
    url: str
    username: str
    password: str
    auth: str = "digest"
    doors: tuple[int, ...] = (1,)
    timeout_s: float = 3.0
    listen_host: str | None = None
    listen_port: int | None = None
    event_senders: tuple[PushCredential, ...] = ()
    poll_s: float = 10.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"AccessControllerDeviceConfig(name={self.name!r}, url={self.url!r}, doors={self.doors})"


# --- helpers -------------------------------------------------------------------------------------
def int_list(t: Table, name: str, lo: int, hi: int, default: Iterable[int] = ()) -> tuple[int, ...]:
    v = t.raw(name, list(default))
    if not isinstance(v, list) or any(not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi for x in v):
        raise t.error(name, "must be a list of integers", v, f"integers from {lo} to {hi}, e.g. [1, 2]")
    if len(set(v)) != len(v):
        raise t.error(name, "holds a number twice", v, "distinct numbers")
    return tuple(v)


def listen(t: Table, name: str, default: str | None) -> tuple[str | None, int | None]:
    text = t.str(name, default)
    if text is None:
        return None, None
    host, _, port = text.rpartition(":")
    if not host or not _HOST_RE.match(host) or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise t.error(name, "invalid listen address", text, '"HOST:PORT", e.g. "0.0.0.0:8080" (port 0 = any free)')
    return host.strip("[]"), int(port)


def common(t: Table, kind: str, poll_default: float) -> dict[str, Any]:
    allow = t.str_list("allow_commands", [])
    known = COMMANDS[kind]
    for cmd in allow:
        if cmd not in known:
            raise t.error("allow_commands", f"a {kind} device has no command {cmd!r}", cmd, "one of " + ", ".join(known))
    return {"name": t.str("name", pattern=NAME_RE, expected=_NAME_EXPECTED),
            "poll_s": t.float("poll_s", poll_default, min=0.05, max=86400),
            "points": t.str_list("points", []), "allow_commands": allow}


def check_points(t: Table, points: tuple[str, ...], valid: Any, expected: str) -> None:
    for p in points:
        if not valid(p):
            raise t.error("points", f"unknown point {p!r}", p, expected)


def _timeout(t: Table, default_ms: int, hi_ms: int = 30_000) -> float:
    return t.int("timeout_ms", default_ms, min=10, max=hi_ms) / 1000.0


def _host(t: Table) -> str:
    return t.str("host", pattern=_HOST_RE, expected="a host name or IP address")


def _accepts(fn: Any) -> Any:
    def ok(point: str) -> bool:
        try:
            fn(point)
        except ValueError:
            return False
        return True
    return ok


# --- one parser per kind -------------------------------------------------------------------------
def parse_wxt_serial(t: Table, base_dir: Path) -> WxtSerialDeviceConfig:
    c = common(t, "wxt_serial", 1.0)
    mode = t.str("mode", "ascii", choices=("ascii", "nmea"))
    cfg = WxtSerialDeviceConfig(
        port=t.str("port", expected="a serial device path, e.g. /dev/ttyUSB0"), mode=mode,
        address=t.str("address", "0", pattern=re.compile(r"^[0-9A-Za-z]$"), expected="one character 0-9, A-Z or a-z"),
        baudrate=t.int("baudrate", 19200 if mode == "ascii" else 4800, min=1200, max=115200),
        parity=t.str("parity", "N", choices=("N", "E", "O")), bytesize=t.int("bytesize", 8, min=7, max=8),
        stopbits=t.int("stopbits", 1, min=1, max=2), timeout_s=_timeout(t, 1000), **c)
    if cfg.baudrate not in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200):
        raise t.error("baudrate", "not a rate the WXT530 supports", cfg.baudrate,
                      "one of 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200")
    if cfg.timeout_s <= 0.15:
        raise t.error("timeout_ms", "too short for a serial reply", int(cfg.timeout_s * 1000), "more than 150")
    check_points(t, cfg.points, WXT_POINTS.__contains__, "WXT field codes: " + ", ".join(sorted(WXT_POINTS)))
    return cfg


def parse_ntcip(t: Table, base_dir: Path) -> NtcipDeviceConfig:
    c = common(t, "ntcip", 1.0)
    cfg = NtcipDeviceConfig(
        host=_host(t), port=t.int("port", 161, min=1, max=65535), community=t.str("community", "public"),
        write_community=t.str("write_community", "private"), timeout_s=_timeout(t, 1000),
        retries=t.int("retries", 1, min=0, max=5), phases=t.int("phases", 8, min=1, max=255),
        detectors=int_list(t, "detectors", 1, 255), patterns=int_list(t, "patterns", 1, 253),
        pattern_time_unit=t.str("pattern_time_unit", "s", choices=("s", "ds")),
        allowed_patterns=frozenset(int_list(t, "allowed_patterns", 1, 253)),
        allow_standby=t.bool("allow_standby", False), allow_free=t.bool("allow_free", False),
        allow_flash=t.bool("allow_flash", False), **c)
    check_points(t, cfg.points, _accepts(ntcip.validate_point),
                 "phase<n>_color/ped/vehcall/pedcall, det<n>_volume/occupancy, pattern<n>_cycle/offset, "
                 "coord_pattern, local_free, coord_cycle or coord_sync")
    return cfg


def _modes(t: Table) -> frozenset[int]:
    by_name = {v: k for k, v in MODES.items()}
    raw = t.raw("allowed_modes", [])
    out = set()
    for v in raw if isinstance(raw, list) else [raw]:
        code = by_name.get(v) if isinstance(v, str) else v if isinstance(v, int) and not isinstance(v, bool) else None
        if code not in MODES:
            raise t.error("allowed_modes", "unknown run mode", v, "mode codes or names: " + ", ".join(sorted(by_name)))
        out.add(code)
    return frozenset(out)


def parse_gbt20999(t: Table, base_dir: Path) -> GbtDeviceConfig:
    c = common(t, "gbt20999", 1.0)
    cfg = GbtDeviceConfig(
        host=_host(t), port=t.int("port", min=1, max=65535), centre=t.int("centre", 1, min=0, max=255),
        controller_id=t.int("controller_id", 1, min=0, max=0xFFFFFFFF), road=t.int("road", 1, min=0, max=255),
        timeout_s=_timeout(t, 2000, 60_000), heartbeat_s=t.float("heartbeat_s", 0.0, min=0, max=3600),
        detectors=int_list(t, "detectors", 1, 255), plans=int_list(t, "plans", 1, 255),
        allowed_plans=frozenset(int_list(t, "allowed_plans", 1, 255)),
        allowed_stages=frozenset(int_list(t, "allowed_stages", 1, 255)), allowed_modes=_modes(t), **c)
    check_points(t, cfg.points, _accepts(point_item),
                 "run_mode, current_plan, current_stage, det<n>_flow/occupancy/speed or plan<n>_cycle/offset/coord_seq")
    return cfg


def _plates(t: Table, name: str, base_dir: Path) -> frozenset[str]:
    """An inline list of plates, or the path of a text file with one plate per line (# comments)."""
    v = t.raw(name, [])
    if isinstance(v, list):
        lines = [(i + 1, x) for i, x in enumerate(v)]
        where = "entry"
    elif isinstance(v, str) and v:
        path = Path(v) if Path(v).is_absolute() else base_dir / v
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise t.error(name, f"cannot read the plate list file: {exc}", v, "a UTF-8 text file, one plate per line") from None
        lines = [(i + 1, ln.split("#", 1)[0].strip()) for i, ln in enumerate(text.splitlines())]
        lines = [(i, ln) for i, ln in lines if ln]
        where = f"line of {path.name}:"
    else:
        raise t.error(name, "must be a list of plates or a file path", v, '["鲁A12345", ...] or "plates.txt"')
    out = set()
    for i, plate in lines:
        norm = gates.normalise_plate(plate) if isinstance(plate, str) else ""
        if not norm or len(norm) > 32:
            raise t.error(name, f"{where} {i} is not a plate", plate, "1-32 characters of a licence plate")
        out.add(norm)
    return frozenset(out)


def _sources(t: Table, name: str) -> Any:
    values = t.str_list(name, [])
    try:
        return parse_sources(values)
    except ValueError as exc:
        raise t.error(name, str(exc), list(values), 'IP addresses or networks, e.g. ["192.168.1.100", "10.0.0.0/24"]')


def _secret(t: Table, name: str) -> str | None:
    v = t.raw(name, None)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) < 8 or len(v) > 256 or not v.isprintable():
        raise t.error(name, "not a usable shared secret", "***", "8-256 printable characters")
    return v


def _cameras(t: Table) -> tuple[PushCredential, ...]:
    raw = t.raw("cameras", None)
    expected = '[{ serial = "fe71e106-57263272", secret = "<8+ chars>", sources = ["192.168.1.100"] }]'
    if not raw:
        raise t.error("cameras", "required: the cameras that may push, each with a secret and/or sources "
                      "(an empty list would let anyone open the gate)", raw, expected)
    if isinstance(raw, list) and any(isinstance(x, str) for x in raw):
        raise t.error("cameras", "a serial alone is not authentication; give each camera a secret and/or sources",
                      raw, expected)
    out = []
    for ct in t.tables("cameras"):
        serial = ct.str("serial", expected="the camera's serial number (its pushes carry it)")
        try:
            out.append(PushCredential(identity=serial, secret=_secret(ct, "secret"), username=ct.str("user", None),
                                      sources=_sources(ct, "sources")))
        except ValueError as exc:
            raise ct.error("secret", str(exc), None, "secret (8+ characters) and/or sources") from None
        ct.reject_unknown()
    try:
        PushAuth(out)
    except ValueError as exc:
        raise t.error("cameras", str(exc), None, "a distinct user name per camera") from None
    return tuple(out)


def parse_plate_camera(t: Table, base_dir: Path) -> PlateCameraDeviceConfig:
    c = common(t, "plate_camera", 30.0)
    host, port = listen(t, "listen", "127.0.0.1:8080")
    rules = t.table("rules") or Table({}, t.file, f"{t.key}.rules")
    prefixes = rules.str_list("allow_prefixes", [])
    min_conf = rules.int("min_confidence", 80, min=0, max=100)
    rules.reject_unknown()
    relay = t.raw("relay", None)
    if relay is not None and (not isinstance(relay, int) or isinstance(relay, bool) or not 0 <= relay <= 3):
        raise t.error("relay", "not a camera IO output", relay, "an integer from 0 to 3")
    cfg = PlateCameraDeviceConfig(
        listen_host=host or "127.0.0.1", listen_port=port if port is not None else 8080,
        allow_list=_plates(t, "allow_list", base_dir), deny_list=_plates(t, "deny_list", base_dir),
        allow_prefixes=prefixes, min_confidence=min_conf, cameras=_cameras(t),
        relay=relay, heartbeat_timeout_s=t.float("heartbeat_timeout_s", 15.0, min=1, max=3600), **c)
    check_points(t, cfg.points, lambda p: p in ("events_total", "duplicates_total") or (
        p.startswith("online.") and len(p) > 7), "events_total, duplicates_total or online.<camera serial>")
    return cfg


def parse_access_controller(t: Table, base_dir: Path) -> AccessControllerDeviceConfig:
    c = common(t, "access_controller", 10.0)
    doors = int_list(t, "doors", 1, 64, (1,))
    if not doors:
        raise t.error("doors", "needs at least one door", [], "door numbers 1..64, e.g. [1]")
    host, port = listen(t, "listen", None)
    senders: tuple[PushCredential, ...] = ()
    secret, sources = _secret(t, "event_secret"), _sources(t, "event_sources")
    user = t.str("event_user", None)
    if port is not None:
        if secret is None and not sources:
            raise t.error("event_secret", "an event listener needs event_secret and/or event_sources "
                          "(without them anyone could push door events)", None,
                          'event_secret = "<8+ chars>" (HTTP Basic password of the controller\'s push) '
                          'and/or event_sources = ["192.168.1.64"]')
        senders = (PushCredential(identity=c["name"], secret=secret, username=user or "controller",
                                  sources=sources),)
    cfg = AccessControllerDeviceConfig(
        url=t.str("url", pattern=_URL_RE, expected="the controller's base URL, e.g. http://192.168.1.64"),
        username=t.str("username"), password=_password(t), auth=t.str("auth", "digest", choices=("digest", "basic")),
        doors=doors, timeout_s=_timeout(t, 3000, 60_000), listen_host=host or "127.0.0.1", listen_port=port,
        event_senders=senders, **c)
    names = {f"door{d}_{k}" for d in doors for k in ("lock", "state", "magnet")}
    check_points(t, cfg.points, names.__contains__, "door<n>_lock/state/magnet for a door in doors")
    return cfg


def _password(t: Table) -> str:
    v = t.raw("password", None)
    if not isinstance(v, str) or not v:
        raise t.error("password", "required: a non-empty string", None if v is None else "***", "the device password")
    return v


PARSERS = {"wxt_serial": parse_wxt_serial, "ntcip": parse_ntcip, "gbt20999": parse_gbt20999,
           "plate_camera": parse_plate_camera, "access_controller": parse_access_controller}


# --- cross-device rules --------------------------------------------------------------------------
def check_exclusive(devices: Iterable[Any], rtu_ports: dict[str, str], health: tuple[str, int] | None,
                    file: str) -> None:
    """One owner per serial port (a [[bus]] or one wxt_serial device); one listener per TCP port."""
    owners = {os.path.realpath(port): f"[[bus]] {bus!r}" for bus, port in rtu_ports.items()}
    listeners: list[tuple[str, int, str]] = [(health[0], health[1], "[health] listen")] if health else []
    for i, d in enumerate(devices):
        if d.kind == "wxt_serial":
            real = os.path.realpath(d.port)
            if real in owners:
                raise ConfigError(f"serial port already used by {owners[real]}: a serial line has one master",
                                  file=file, key=f"device[{i}].port", value=d.port, expected="a port no other device or bus uses")
            owners[real] = f"device {d.name!r}"
        port = getattr(d, "listen_port", None)
        if port:
            host = d.listen_host
            for other_host, other_port, who in listeners:
                if other_port == port and (host == other_host or "0.0.0.0" in (host, other_host) or "::" in (host, other_host)):
                    raise ConfigError(f"listen port already used by {who}", file=file, key=f"device[{i}].listen",
                                      value=f"{host}:{port}", expected="a port nothing else on this box listens on")
            listeners.append((host, port, f"device {d.name!r}"))
