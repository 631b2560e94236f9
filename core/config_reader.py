"""Typed access to a parsed TOML table, producing ConfigErrors that name file, key, value and expectation.

Used once, at load: the rest of the agent only ever sees typed, frozen config objects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from core.errors import ConfigError

_MISSING = object()
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Table:
    """A view on one TOML table with its dotted location, for precise error messages."""

    def __init__(self, data: Mapping[str, Any], file: str, key: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError("must be a table", file=file, key=key or None, value=data, expected="a TOML table")
        self.data = data
        self.file = file
        self.key = key
        self._used: set[str] = set()

    def _k(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, message: str, value: Any = None, expected: str | None = None) -> ConfigError:
        return ConfigError(message, file=self.file, key=self._k(name), value=value, expected=expected)

    def _get(self, name: str, default: Any) -> Any:
        self._used.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise ConfigError("required key is missing", file=self.file, key=self._k(name))
        return default

    def str(self, name: str, default: Any = _MISSING, *, pattern: re.Pattern | None = None,
            choices: Iterable[str] | None = None, expected: str | None = None) -> Any:
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, str) or not v:
            raise self.error(name, "must be a non-empty string", v, expected or "a string")
        if choices is not None and v not in set(choices):
            raise self.error(name, "unknown value", v, "one of " + ", ".join(sorted(choices)))
        if pattern is not None and not pattern.match(v):
            raise self.error(name, "invalid format", v, expected or f"matching {pattern.pattern}")
        return v

    def int(self, name: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None) -> Any:
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, int) or isinstance(v, bool):
            raise self.error(name, "must be an integer", v, _range("an integer", min, max))
        if (min is not None and v < min) or (max is not None and v > max):
            raise self.error(name, "out of range", v, _range("an integer", min, max))
        return v

    def float(self, name: str, default: Any = _MISSING, *, min: float | None = None,
              max: float | None = None, exclusive_min: bool = False) -> Any:
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise self.error(name, "must be a number", v, _range("a number", min, max))
        if min is not None and (v < min or (exclusive_min and v == min)):
            raise self.error(name, "out of range", v, _range("a number", min, max, exclusive_min))
        if max is not None and v > max:
            raise self.error(name, "out of range", v, _range("a number", min, max, exclusive_min))
        return float(v)

    def bool(self, name: str, default: Any = _MISSING) -> Any:
        v = self._get(name, default)
        if not isinstance(v, bool):
            raise self.error(name, "must be true or false", v, "a boolean")
        return v

    def str_list(self, name: str, default: Any = _MISSING) -> tuple[str, ...]:
        v = self._get(name, default)
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
            raise self.error(name, "must be a list of non-empty strings", v, 'e.g. ["a", "b"]')
        return tuple(v)

    def table(self, name: str, *, required: bool = False) -> Table | None:
        v = self._get(name, _MISSING if required else None)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise self.error(name, "must be a table", v, f"a [{self._k(name)}] section")
        return Table(v, self.file, self._k(name))

    def tables(self, name: str) -> list[Table]:
        v = self._get(name, [])
        if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
            raise self.error(name, "must be an array of tables", v, f"[[{self._k(name)}]] sections")
        return [Table(x, self.file, f"{self._k(name)}[{i}]") for i, x in enumerate(v)]

    def raw(self, name: str, default: Any = None) -> Any:
        return self._get(name, default)

    def reject_unknown(self) -> None:
        """A typo in a key must not be silently ignored."""
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            raise ConfigError(
                "unknown key", file=self.file, key=self._k(unknown[0]), value=None,
                expected="one of " + ", ".join(sorted(self._used)) if self._used else "no keys here")


def _range(what: str, lo: Any, hi: Any, exclusive: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{what} from {lo} to {hi}"
    if lo is not None:
        return f"{what} {'>' if exclusive else '>='} {lo}"
    if hi is not None:
        return f"{what} <= {hi}"
    return what


def parse_size(t: Table, name: str, default: int) -> int:
    """Sizes as integers (bytes) or strings like "256MB", "2 GiB"."""
    v = t.raw(name, default)
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", v, re.IGNORECASE)
        if m:
            mult = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
            return int(float(m.group(1)) * mult[(m.group(2) or "b").lower()])
    raise t.error(name, "invalid size", v, 'bytes as an integer, or a string like "256MB" or "2GiB"')
