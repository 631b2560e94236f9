"""Settings of an ISAPI access controller (doors, card readers): one frozen object, its rules and
its parser. The driver takes this object; the config file and code that builds it directly meet
the same rules.

    url, username, password, auth, doors, timeout_ms, listen (event listener; then
    event_secret / event_user and/or event_sources are required)

Door commands are refused unless listed in allow_commands (none by default: holding a door open
is a security decision). So is set_allowlist (the versioned card list, kept on the box: see driver.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.config_reader import Table
from drivers import gates
from drivers.kind import ParseContext
from drivers.push_auth import PushAuth, PushCredential
from drivers.settings_rules import (
    URL_RE,
    SettingError,
    common,
    construct,
    int_list,
    listen,
    read_secret,
    read_sources,
    read_timeout,
)

__all__ = ["COMMANDS", "AccessControllerSettings", "parse"]

COMMANDS = (*gates.DOOR_COMMANDS, "set_allowlist")  # set_allowlist: the card list, stored on the box only
URL_EXPECTED = "the controller's base URL, e.g. http://192.168.1.64"
DOORS_EXPECTED = "door numbers 1..64, e.g. [1]"
POINT_KINDS = ("lock", "state", "magnet")


@dataclass(frozen=True, slots=True)
class AccessControllerSettings:
    kind: ClassVar[str] = "access_controller"
    name: str
    url: str                                  # the controller's base URL, http(s)://host[:port]
    username: str
    password: str
    auth: str = "digest"                      # "digest" (Hikvision default) or "basic"
    doors: tuple[int, ...] = (1,)
    timeout_s: float = 3.0
    listen_host: str = "127.0.0.1"            # the event listener binds to loopback unless configured
    listen_port: int | None = None            # None: no event listener
    event_senders: tuple[PushCredential, ...] = ()  # who may push events (required with listen_port)
    store_timeout_s: float = 5.0              # an event's answer waits this long for the buffer's commit
    poll_s: float = 10.0
    points: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not URL_RE.match(self.url):
            raise SettingError("url", "not an http(s) base URL", self.url, URL_EXPECTED)
        if not self.username:
            raise SettingError("username", "required: a non-empty string", self.username, "the device user name")
        if not isinstance(self.password, str) or not self.password:
            raise SettingError("password", "required: a non-empty string", None if self.password is None else "***",
                               "the device password")
        if self.auth not in ("digest", "basic"):
            raise SettingError("auth", "unknown value", self.auth, "one of basic, digest")
        if not self.doors:
            raise SettingError("doors", "needs at least one door", list(self.doors), DOORS_EXPECTED)
        if any(not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 64 for d in self.doors):
            raise SettingError("doors", "must be a list of integers", list(self.doors),
                               "integers from 1 to 64, e.g. [1, 2]")
        if len(set(self.doors)) != len(self.doors):
            raise SettingError("doors", "holds a number twice", list(self.doors), "distinct numbers")
        for cmd in self.allow_commands:
            if cmd not in COMMANDS:
                raise SettingError("allow_commands", f"an access_controller device has no command {cmd!r}", cmd,
                                   "one of " + ", ".join(COMMANDS))
        if not 0 < self.timeout_s <= 60:
            raise SettingError("timeout_ms", "out of range", round(self.timeout_s * 1000),
                               "more than 0 and at most 60000")
        if not 0 < self.store_timeout_s <= 60:
            raise SettingError("store_timeout_s", "out of range", self.store_timeout_s, "0 < seconds <= 60")
        if self.listen_port is not None:
            if not 0 <= self.listen_port <= 65535:
                raise SettingError("listen", "not a TCP port", self.listen_port, "0..65535 (0 = any free)")
            if not self.event_senders:
                raise SettingError("event_secret", "an event listener needs event_secret and/or event_sources "
                                   "(without them anyone could push door events)", None,
                                   'event_secret = "<8+ chars>" (HTTP Basic password of the controller\'s push) '
                                   'and/or event_sources = ["192.168.1.64"]')
            try:
                PushAuth(self.event_senders)  # the checks the listener applies
            except ValueError as exc:
                raise SettingError("event_secret", str(exc), None, "one sender per user name") from None
        names = {f"door{d}_{k}" for d in self.doors for k in POINT_KINDS} | {"allowlist_version"}
        for p in self.points:
            if p not in names:
                raise SettingError("points", f"unknown point {p!r}", p,
                                   "door<n>_lock/state/magnet for a door in doors, or allowlist_version")

    def __repr__(self) -> str:  # keep the password out of logs and tracebacks
        return f"AccessControllerSettings(name={self.name!r}, url={self.url!r}, doors={self.doors})"


def parse(t: Table, ctx: ParseContext) -> AccessControllerSettings:
    c = common(t, "access_controller", COMMANDS, 10.0)
    host, port = listen(t, "listen", None)
    secret, sources = read_secret(t, "event_secret"), read_sources(t, "event_sources")
    user = t.str("event_user", None)
    senders: tuple[PushCredential, ...] = ()
    if port is not None and (secret is not None or sources):  # neither: the settings' rule names event_secret
        senders = (PushCredential(identity=c["name"], secret=secret, username=user or "controller", sources=sources),)
    password = t.raw("password", None)
    if not isinstance(password, str):
        raise t.error("password", "required: a non-empty string", None if password is None else "***",
                      "the device password")
    return construct(
        t, AccessControllerSettings, url=t.str("url", pattern=URL_RE, expected=URL_EXPECTED),
        username=t.str("username"), password=password, auth=t.str("auth", "digest", choices=("digest", "basic")),
        doors=int_list(t, "doors", 1, 64, (1,)), timeout_s=read_timeout(t, 3000, 60_000),
        listen_host=host or "127.0.0.1", listen_port=port, event_senders=senders, **c)
