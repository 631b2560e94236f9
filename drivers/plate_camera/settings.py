"""Settings of a plate-reading camera that pushes to the box: one frozen object, its rules and its
parser. The receiver (driver.py) takes this object; the config file and code that builds it
directly meet the same rules.

    listen (default "127.0.0.1:8080"), cameras = [{serial, secret, user, sources}] (required),
    allow_list / deny_list (inline list or a file path), relay, heartbeat_timeout_s,
    (allow_list is the starting list: a versioned document stored by allow_plate / revoke_plate /
    set_allowlist replaces it, see drivers/allowlist_keeper.py)
    [device.rules] allow_prefixes, min_confidence

A camera needs a `secret` (the HTTP Basic password of its push URL) and/or `sources`: a serial
is a name anyone can type, and an empty list must not mean "accept anyone".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.config_reader import Table
from drivers import gates
from drivers.kind import ParseContext
from drivers.push_auth import PushAuth, PushCredential
from drivers.settings_rules import SettingError, common, construct, listen, read_secret, read_sources

__all__ = ["COMMANDS", "PlateCameraSettings", "parse"]

COMMANDS = ("allow_plate", "revoke_plate", "set_allowlist")
CAMERAS_EXPECTED = '[{ serial = "fe71e106-57263272", secret = "<8+ chars>", sources = ["192.168.1.100"] }]'
PLATE_EXPECTED = "1-32 characters of a licence plate"
_FIXED_POINTS = ("events_total", "duplicates_total", "allowlist_version")
POINTS_EXPECTED = "events_total, duplicates_total, allowlist_version or online.<camera serial>"


def _plate_set(key: str, plates: Iterable[str]) -> frozenset[str]:
    """The plates normalised (gates.normalise_plate); SettingError(key) for one that is not a plate."""
    out: set[str] = set()
    for plate in plates:
        norm = gates.normalise_plate(plate) if isinstance(plate, str) else ""
        if not norm or len(norm) > 32:
            raise SettingError(key, "not a plate", plate, PLATE_EXPECTED)
        out.add(norm)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class PlateCameraSettings:
    kind: ClassVar[str] = "plate_camera"
    name: str
    listen_host: str = "127.0.0.1"             # loopback unless configured otherwise
    listen_port: int = 8080                    # 0: any free port
    allow_list: frozenset[str] = frozenset()   # normalised plates
    deny_list: frozenset[str] = frozenset()    # normalised plates; wins over everything
    allow_prefixes: tuple[str, ...] = ()
    min_confidence: int = 80
    cameras: tuple[PushCredential, ...] = ()   # the cameras that may push (identity = serial); required
    relay: int | None = None                   # also pulse this camera IO (ivs_ioctrl) when opening
    heartbeat_timeout_s: float = 15.0
    dedup_capacity: int = 20_000               # >= the camera's offline store (9000 records)
    store_timeout_s: float = 5.0               # the camera's answer waits this long for the buffer's commit
    max_body: int = 4 << 20                    # pushes may carry base64 images
    poll_s: float = 30.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.listen_port <= 65535:
            raise SettingError("listen", "not a TCP port", self.listen_port, "0..65535 (0 = any free)")
        # plates are kept normalised, whether they came from the config file or from code
        object.__setattr__(self, "allow_list", _plate_set("allow_list", self.allow_list))
        object.__setattr__(self, "deny_list", _plate_set("deny_list", self.deny_list))
        object.__setattr__(self, "allow_prefixes", tuple(self.allow_prefixes))
        if any(not isinstance(p, str) or not p for p in self.allow_prefixes):
            raise SettingError("rules.allow_prefixes", "holds an empty prefix (that would open for every plate)",
                               list(self.allow_prefixes), 'non-empty plate prefixes, e.g. ["鲁A8"]')
        if isinstance(self.min_confidence, bool) or not 0 <= self.min_confidence <= 100:
            raise SettingError("rules.min_confidence", "out of range", self.min_confidence,
                               "an integer from 0 to 100")
        if not self.cameras:
            raise SettingError("cameras", "required: the cameras that may push, each with a secret and/or sources "
                               "(an empty list would let anyone open the gate)", list(self.cameras), CAMERAS_EXPECTED)
        try:
            PushAuth(self.cameras)  # the checks the receiver applies (no shared user names)
        except ValueError as exc:
            raise SettingError("cameras", str(exc), None, "a distinct user name per camera") from None
        if self.relay is not None and (not isinstance(self.relay, int) or isinstance(self.relay, bool)
                                       or not 0 <= self.relay <= 3):
            raise SettingError("relay", "not a camera IO output", self.relay, "an integer from 0 to 3")
        if not 1 <= self.heartbeat_timeout_s <= 3600:
            raise SettingError("heartbeat_timeout_s", "out of range", self.heartbeat_timeout_s,
                               "a number from 1 to 3600")
        if self.dedup_capacity < 9000:
            raise SettingError("dedup_capacity", "smaller than the camera's offline store", self.dedup_capacity,
                               "at least 9000")
        if not 0 < self.store_timeout_s <= 60:
            raise SettingError("store_timeout_s", "out of range", self.store_timeout_s, "0 < seconds <= 60")
        if self.max_body < 1024:
            raise SettingError("max_body", "too small for a push", self.max_body, "at least 1024 bytes")
        for cmd in self.allow_commands:
            if cmd not in COMMANDS:
                raise SettingError("allow_commands", f"a plate_camera device has no command {cmd!r}", cmd,
                                   "one of " + ", ".join(COMMANDS))
        for p in self.points:
            if p not in _FIXED_POINTS and not (p.startswith("online.") and len(p) > 7):
                raise SettingError("points", f"unknown point {p!r}", p, POINTS_EXPECTED)

    def gate_rules(self) -> gates.GateRules:
        """Who may pass, as drivers/gates.py decides it (the receiver starts from these)."""
        return gates.GateRules(self.allow_list, self.deny_list, self.allow_prefixes, self.min_confidence)


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
            raise t.error(name, f"cannot read the plate list file: {exc}", v,
                          "a UTF-8 text file, one plate per line") from None
        lines = [(i + 1, ln.split("#", 1)[0].strip()) for i, ln in enumerate(text.splitlines())]
        lines = [(i, ln) for i, ln in lines if ln]
        where = f"line of {path.name}:"
    else:
        raise t.error(name, "must be a list of plates or a file path", v, '["鲁A12345", ...] or "plates.txt"')
    out: set[str] = set()
    for i, plate in lines:
        try:
            out |= _plate_set(name, [plate])
        except SettingError:  # the settings' own rule, here naming the line of the file or list
            raise t.error(name, f"{where} {i} is not a plate", plate, PLATE_EXPECTED) from None
    return frozenset(out)


def _cameras(t: Table) -> tuple[PushCredential, ...]:
    raw = t.raw("cameras", None)
    if isinstance(raw, list) and any(isinstance(x, str) for x in raw):
        raise t.error("cameras", "a serial alone is not authentication; give each camera a secret and/or sources",
                      raw, CAMERAS_EXPECTED)
    out = []
    for ct in t.tables("cameras") if raw else []:  # none at all: the settings' rule names it
        serial = ct.str("serial", expected="the camera's serial number (its pushes carry it)")
        try:
            out.append(PushCredential(identity=serial, secret=read_secret(ct, "secret"), username=ct.str("user", None),
                                      sources=read_sources(ct, "sources")))
        except ValueError as exc:
            raise ct.error("secret", str(exc), None, "secret (8+ characters) and/or sources") from None
        ct.reject_unknown()
    return tuple(out)


def parse(t: Table, ctx: ParseContext) -> PlateCameraSettings:
    c = common(t, "plate_camera", COMMANDS, 30.0)
    host, port = listen(t, "listen", "127.0.0.1:8080")
    rules = t.table("rules") or Table({}, t.file, f"{t.key}.rules")
    prefixes = rules.str_list("allow_prefixes", [])
    min_conf = rules.int("min_confidence", 80, min=0, max=100)
    rules.reject_unknown()
    relay = t.raw("relay", None)
    if relay is not None and (not isinstance(relay, int) or isinstance(relay, bool)):
        raise t.error("relay", "must be an integer", relay, "an integer from 0 to 3")
    return construct(
        t, PlateCameraSettings, listen_host=host or "127.0.0.1", listen_port=port if port is not None else 8080,
        allow_list=_plates(t, "allow_list", ctx.base_dir), deny_list=_plates(t, "deny_list", ctx.base_dir),
        allow_prefixes=prefixes, min_confidence=min_conf, cameras=_cameras(t),
        relay=relay, heartbeat_timeout_s=t.float("heartbeat_timeout_s", 15.0, min=1, max=3600), **c)
