"""Rules every kind's settings parser shares: the [[device]] keys all kinds have, and typed helpers.

`common(t, kind, commands, poll_default)` reads name, poll_s, points and allow_commands (only the
kind's own commands may be allowed); the helpers read integer lists, listen addresses, hosts,
timeouts, push senders' secrets and source networks, each error naming file, key, value and
what was expected (core.config_reader.Table).

A kind's settings class checks its own rules in `__post_init__` and raises `SettingError(key, ...)`
with the config key; the parser builds it with `construct(t, Cls, ...)`, which turns that into the
ConfigError naming file and key. One class, one set of rules, for the config file and for code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from core.config_reader import NAME_RE, Table
from drivers.push_auth import parse_sources

HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]{1,253}$")
URL_RE = re.compile(r"^https?://[^\s/?#]+/?$")
NAME_EXPECTED = "1-64 chars of letters, digits, '.', '_' or '-'"


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
    if not host or not HOST_RE.match(host) or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise t.error(name, "invalid listen address", text, '"HOST:PORT", e.g. "0.0.0.0:8080" (port 0 = any free)')
    return host.strip("[]"), int(port)


def common(t: Table, kind: str, commands: Iterable[str], poll_default: float) -> dict[str, Any]:
    allow = t.str_list("allow_commands", [])
    known = tuple(commands)
    for cmd in allow:
        if cmd not in known:
            raise t.error("allow_commands", f"a {kind} device has no command {cmd!r}", cmd,
                          "one of " + ", ".join(known) if known else "no commands: this kind has none")
    return {"name": t.str("name", pattern=NAME_RE, expected=NAME_EXPECTED),
            "poll_s": t.float("poll_s", poll_default, min=0.05, max=86400),
            "points": t.str_list("points", []), "allow_commands": allow}


def check_points(t: Table, points: tuple[str, ...], valid: Callable[[str], bool], expected: str) -> None:
    for p in points:
        if not valid(p):
            raise t.error("points", f"unknown point {p!r}", p, expected)

def read_timeout(t: Table, default_ms: int, hi_ms: int = 30_000) -> float:
    return t.int("timeout_ms", default_ms, min=10, max=hi_ms) / 1000.0


def read_host(t: Table) -> str:
    return t.str("host", pattern=HOST_RE, expected="a host name or IP address")


def accepts(fn: Any) -> Any:
    def ok(point: str) -> bool:
        try:
            fn(point)
        except ValueError:
            return False
        return True
    return ok


def read_sources(t: Table, name: str) -> Any:
    values = t.str_list(name, [])
    try:
        return parse_sources(values)
    except ValueError as exc:
        raise t.error(name, str(exc), list(values),
                      'IP addresses or networks, e.g. ["192.168.1.100", "10.0.0.0/24"]') from None


def read_secret(t: Table, name: str) -> str | None:
    v = t.raw(name, None)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) < 8 or len(v) > 256 or not v.isprintable():
        raise t.error(name, "not a usable shared secret", "***", "8-256 printable characters")
    return v



class SettingError(ValueError):
    """A rule of a kind's settings is broken. Raised by the settings class itself (so code that builds
    settings directly gets the same rules as the config file), and turned into a ConfigError naming
    the file and the config key by `construct`."""

    def __init__(self, key: str, message: str, value: Any = None, expected: str | None = None) -> None:
        super().__init__(f"{key}: {message}" + (f" (got {value!r})" if value is not None else "")
                         + (f"; expected {expected}" if expected else ""))
        self.key, self.message, self.value, self.expected = key, message, value, expected


def construct(t: Table, cls: Callable[..., Any], **values: Any) -> Any:
    """`cls(**values)` with its rules' SettingError reported as the table's ConfigError for that key."""
    try:
        return cls(**values)
    except SettingError as exc:
        raise t.error(exc.key, exc.message, exc.value, exc.expected) from None
