"""Settings of a plate-reading camera that pushes to the box: one frozen object and its parser.

    listen (default "127.0.0.1:8080"), cameras = [{serial, secret, user, sources}] (required),
    allow_list / deny_list (inline list or a file path), relay, heartbeat_timeout_s,
    [device.rules] allow_prefixes, min_confidence

A camera needs a `secret` (the HTTP Basic password of its push URL) and/or `sources`: a serial
is a name anyone can type, and an empty list must not mean "accept anyone".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.config_reader import Table
from drivers import gates
from drivers.kind import ParseContext
from drivers.push_auth import PushAuth, PushCredential
from drivers.settings_rules import check_points, common, listen, read_secret, read_sources


COMMANDS = ("allow_plate", "revoke_plate")


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
            out.append(PushCredential(identity=serial, secret=read_secret(ct, "secret"), username=ct.str("user", None),
                                      sources=read_sources(ct, "sources")))
        except ValueError as exc:
            raise ct.error("secret", str(exc), None, "secret (8+ characters) and/or sources") from None
        ct.reject_unknown()
    try:
        PushAuth(out)
    except ValueError as exc:
        raise t.error("cameras", str(exc), None, "a distinct user name per camera") from None
    return tuple(out)

def parse(t: Table, ctx: ParseContext) -> PlateCameraDeviceConfig:
    c = common(t, "plate_camera", COMMANDS, 30.0)
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
        allow_list=_plates(t, "allow_list", ctx.base_dir), deny_list=_plates(t, "deny_list", ctx.base_dir),
        allow_prefixes=prefixes, min_confidence=min_conf, cameras=_cameras(t),
        relay=relay, heartbeat_timeout_s=t.float("heartbeat_timeout_s", 15.0, min=1, max=3600), **c)
    check_points(t, cfg.points, lambda p: p in ("events_total", "duplicates_total") or (
        p.startswith("online.") and len(p) > 7), "events_total, duplicates_total or online.<camera serial>")
    return cfg

