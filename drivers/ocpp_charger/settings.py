"""Settings of an `ocpp_charger` device: the box as the OCPP 1.6J Central System of one site.

    [[device]]
    name = "carpark-a"
    kind = "ocpp_charger"
    listen = "0.0.0.0:9000"            # chargers connect to ws://<box>:9000/ocpp/<charge point id>
    path = "/ocpp"                     # URL path before the charge point id
    heartbeat_s = 300                  # the `interval` answered to BootNotification
    id_tags = ["04A2B3C4D5E6F7"]       # idTags that may charge (inline list, or a file: one per line)
    accept_any_id_tag = false          # true: every idTag is Accepted (a site that never strands a driver)
    state_file = "ocpp-carpark-a.json" # transaction ids (relative: the config's folder)
    store_timeout_s = 10               # an answer waits this long for the buffer's commit
    command_timeout_s = 10             # a remote command waits this long for the charger
    chargers = [{ id = "CP001", secret = "<8+ chars>", sources = ["10.0.0.0/24"], connectors = 2 }]
    allow_commands = ["remote_start", "remote_stop"]

A charge point id is a name anyone can type: every charger needs a `secret` (OCPP 1.6 security
profile 1, HTTP Basic with the charge point id as user name) and/or `sources` (the addresses it
connects from). A charger with neither, or no charger at all, is a config error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.config_reader import NAME_RE, Table
from drivers.kind import ParseContext
from drivers.push_auth import PushAuth, PushCredential, parse_sources

__all__ = ["COMMANDS", "ChargerConfig", "OcppChargerSettings", "parse", "CP_ID_RE", "ID_TAG_MAX", "COUNTERS"]

COMMANDS = ("remote_start", "remote_stop", "change_availability", "reset", "unlock_connector")
#: charge point ids: the URL's last segment and the first part of every point name (so no '.')
CP_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
ID_TAG_MAX = 20  # OCPP 1.6 IdToken is CiString20Type
COUNTERS = ("callerrors_total", "dropped_total", "refused_total", "transactions_open")
_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]{1,253}$")
_PATH_RE = re.compile(r"^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$")
_CHARGERS_EXAMPLE = '[{ id = "CP001", secret = "<8+ chars>", sources = ["192.168.1.50"], connectors = 2 }]'


@dataclass(frozen=True, slots=True)
class ChargerConfig:
    id: str
    credential: PushCredential
    connectors: int = 2


@dataclass(frozen=True, slots=True)
class OcppChargerSettings:
    kind: ClassVar[str] = "ocpp_charger"
    name: str
    chargers: tuple[ChargerConfig, ...]
    state_file: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 9000
    path: str = "/ocpp"
    heartbeat_s: int = 300
    id_tags: frozenset[str] = frozenset()     # upper case (OCPP compares idTags case-insensitively)
    accept_any_id_tag: bool = False
    store_timeout_s: float = 10.0
    command_timeout_s: float = 10.0
    max_message_bytes: int = 65536
    poll_s: float = 30.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # the driver is only ever built from checked settings
        if not self.chargers:
            raise ValueError("chargers must list at least one charger: an empty list would accept anyone")
        PushAuth([c.credential for c in self.chargers])

    def charger(self, cp_id: str) -> ChargerConfig | None:
        return next((c for c in self.chargers if c.id == cp_id), None)

    def __repr__(self) -> str:  # PushCredential hides the secrets; the id tags are not for logs either
        return (f"OcppChargerSettings(name={self.name!r}, listen={self.listen_host}:{self.listen_port}, "
                f"chargers={[c.id for c in self.chargers]}, id_tags={len(self.id_tags)})")


def valid_point(settings: OcppChargerSettings, point: str) -> bool:
    if point in COUNTERS:
        return True
    cp_id, _, rest = point.partition(".")
    charger = settings.charger(cp_id)
    if charger is None:
        return False
    if rest == "online":
        return True
    m = re.fullmatch(r"c(\d{1,2})\.(status|error)", rest)
    return m is not None and int(m.group(1)) <= charger.connectors


def parse(t: Table, ctx: ParseContext) -> OcppChargerSettings:
    allow = t.str_list("allow_commands", [])
    for cmd in allow:
        if cmd not in COMMANDS:
            raise t.error("allow_commands", f"an ocpp_charger device has no command {cmd!r}", cmd,
                          "one of " + ", ".join(COMMANDS))
    name = t.str("name", pattern=NAME_RE, expected="1-64 chars of letters, digits, '.', '_' or '-'")
    host, port = _listen(t)
    state = Path(t.str("state_file", f"ocpp-{name}.json", expected="a file path for the transaction ids"))
    s = OcppChargerSettings(
        name=name, chargers=_chargers(t), state_file=state if state.is_absolute() else ctx.base_dir / state,
        listen_host=host, listen_port=port,
        path=t.str("path", "/ocpp", pattern=_PATH_RE, expected='a URL path like "/ocpp" ("/" for none)').rstrip("/"),
        heartbeat_s=t.int("heartbeat_s", 300, min=10, max=86400),
        id_tags=_id_tags(t, ctx.base_dir), accept_any_id_tag=t.bool("accept_any_id_tag", False),
        store_timeout_s=t.float("store_timeout_s", 10.0, min=0.1, max=60),
        command_timeout_s=t.float("command_timeout_s", 10.0, min=0.5, max=60),
        max_message_bytes=t.int("max_message_bytes", 65536, min=4096, max=4 << 20),
        poll_s=t.float("poll_s", 30.0, min=0.05, max=86400), points=t.str_list("points", []), allow_commands=allow)
    if not s.id_tags and not s.accept_any_id_tag:
        raise t.error("id_tags", "no idTag could ever charge", None,
                      'the idTags that may charge, e.g. ["04A2B3C4D5E6F7"], or accept_any_id_tag = true')
    for p in s.points:
        if not valid_point(s, p):
            raise t.error("points", f"unknown point {p!r}", p, "<charger id>.online, <charger id>.c<n>.status or "
                          ".error for a connector n of that charger, or " + ", ".join(COUNTERS))
    return s


def _listen(t: Table) -> tuple[str, int]:
    text = t.str("listen", "127.0.0.1:9000")
    host, _, port = text.rpartition(":")
    if not host or not _HOST_RE.match(host) or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise t.error("listen", "invalid listen address", text, '"HOST:PORT", e.g. "0.0.0.0:9000" (port 0 = any free)')
    return host.strip("[]"), int(port)


def _secret(t: Table) -> str | None:
    v = t.raw("secret", None)
    if v is None:
        return None
    # OCPP 1.6 security profile 1: AuthorizationKey is 16..40 bytes; we take 8..256 printable characters
    if not isinstance(v, str) or not 8 <= len(v) <= 256 or not v.isprintable():
        raise t.error("secret", "not a usable shared secret", "***", "8-256 printable characters")
    return v


def _chargers(t: Table) -> tuple[ChargerConfig, ...]:
    raw = t.raw("chargers", None)
    if not raw:
        raise t.error("chargers", "required: the chargers that may connect, each with a secret and/or sources "
                      "(an empty list would let anyone act as a charger)", raw, _CHARGERS_EXAMPLE)
    if isinstance(raw, list) and any(isinstance(x, str) for x in raw):
        raise t.error("chargers", "a charge point id alone is not authentication; give each charger a secret "
                      "and/or sources", raw, _CHARGERS_EXAMPLE)
    out: list[ChargerConfig] = []
    for ct in t.tables("chargers"):
        cp_id = ct.str("id", pattern=CP_ID_RE, expected="the charge point id: 1-48 letters, digits, '_' or '-'")
        if any(c.id == cp_id for c in out):
            raise ct.error("id", "charge point id listed twice", cp_id, "one entry per charger")
        secret = _secret(ct)
        try:
            sources = parse_sources(ct.str_list("sources", []))
        except ValueError as exc:
            raise ct.error("sources", str(exc), ct.raw("sources"),
                           'IP addresses or networks, e.g. ["10.0.0.5"]') from None
        if secret is None and not sources:
            raise ct.error("secret", f"charger {cp_id!r} has neither a secret nor sources: a charge point id is a "
                           "name anyone can type", None, 'secret = "<8+ chars>" and/or sources = ["10.0.0.5"]')
        out.append(ChargerConfig(cp_id, PushCredential(identity=cp_id, secret=secret, sources=sources),
                                 ct.int("connectors", 2, min=1, max=32)))
        ct.reject_unknown()
    return tuple(out)


def _id_tags(t: Table, base_dir: Path) -> frozenset[str]:
    """An inline list of idTags, or the path of a text file with one idTag per line (# comments)."""
    v = t.raw("id_tags", [])
    if isinstance(v, list):
        entries = [(f"entry {i + 1}", x) for i, x in enumerate(v)]
    elif isinstance(v, str) and v:
        path = Path(v) if Path(v).is_absolute() else base_dir / v
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise t.error("id_tags", f"cannot read the idTag file: {exc}", v,
                          "a UTF-8 text file, one idTag per line") from None
        entries = [(f"line {i + 1} of {path.name}", ln.split("#", 1)[0].strip()) for i,
                   ln in enumerate(text.splitlines())]
        entries = [(w, x) for w, x in entries if x]
    else:
        raise t.error("id_tags", "must be a list of idTags or a file path", v, '["04A2B3C4D5E6F7", ...] or "tags.txt"')
    out = set()
    for where, tag in entries:
        if not isinstance(tag, str) or not tag or len(tag) > ID_TAG_MAX or not tag.isprintable() or not tag.isascii():
            raise t.error("id_tags", f"{where} is not an idTag", tag, f"1-{ID_TAG_MAX} printable ASCII characters")
        out.add(tag.upper())  # IdToken is a CiString: compared case-insensitively
    return frozenset(out)
