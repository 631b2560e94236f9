"""Settings of an ISAPI access controller (doors, card readers): one frozen object and its parser.

    url, username, password, auth, doors, timeout_ms, listen (event listener; then
    event_secret / event_user and/or event_sources are required)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import Table
from drivers import gates
from drivers.kind import ParseContext
from drivers.push_auth import PushCredential
from drivers.settings_rules import URL_RE, check_points, common, int_list, listen, read_secret, read_sources, read_timeout


COMMANDS = tuple(gates.DOOR_COMMANDS)


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

def parse(t: Table, ctx: ParseContext) -> AccessControllerDeviceConfig:
    c = common(t, "access_controller", COMMANDS, 10.0)
    doors = int_list(t, "doors", 1, 64, (1,))
    if not doors:
        raise t.error("doors", "needs at least one door", [], "door numbers 1..64, e.g. [1]")
    host, port = listen(t, "listen", None)
    senders: tuple[PushCredential, ...] = ()
    secret, sources = read_secret(t, "event_secret"), read_sources(t, "event_sources")
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
        url=t.str("url", pattern=URL_RE, expected="the controller's base URL, e.g. http://192.168.1.64"),
        username=t.str("username"), password=_password(t), auth=t.str("auth", "digest", choices=("digest", "basic")),
        doors=doors, timeout_s=read_timeout(t, 3000, 60_000), listen_host=host or "127.0.0.1", listen_port=port,
        event_senders=senders, **c)
    names = {f"door{d}_{k}" for d in doors for k in ("lock", "state", "magnet")}
    check_points(t, cfg.points, names.__contains__, "door<n>_lock/state/magnet for a door in doors")
    return cfg

def _password(t: Table) -> str:
    v = t.raw("password", None)
    if not isinstance(v, str) or not v:
        raise t.error("password", "required: a non-empty string", None if v is None else "***", "the device password")
    return v

