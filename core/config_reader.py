"""The one typed-TOML reader: every error names the file, the dotted key, the bad value and what was
expected. The box config, device profiles, model manifests and the supervisor's settings all read
through it, so a mistake reads the same wherever it is made.

    load_toml(path, what="config file") -> Table     the file, read and parsed, or a ConfigError
    Table.str / int / float / bool / str_list / table / tables / mapping / raw, reject_unknown()

Used once, at load: the rest of the code only ever sees typed, frozen objects.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from core.compat import tomllib
from core.errors import ConfigError

_MISSING = object()
_D = TypeVar("_D")  # an accessor's default: returned as given when the key is absent
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Table:
    """A view on one TOML table with its dotted location, for precise error messages."""

    def __init__(self, data: Mapping[str, Any], file: str, key: str = "", *,
                 error: type[ConfigError] = ConfigError) -> None:
        """`error`: the ConfigError subclass raised (e.g. edge_models.manifest.ModelLoadError)."""
        if not isinstance(data, Mapping):
            raise error("must be a table", file=file, key=key or None, value=data, expected="a TOML table")
        self.data = data
        self.file = file
        self.key = key
        self._error = error
        self._used: set[str] = set()

    def _k(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, message: str, value: Any = None, expected: str | None = None) -> ConfigError:
        return self._error(message, file=self.file, key=self._k(name), value=value, expected=expected)

    def child(self, data: Mapping[str, Any], name: str) -> Table:
        """A nested table (same file, same error class) at `<key>.<name>`."""
        return Table(data, self.file, self._k(name), error=self._error)

    def _get(self, name: str, default: Any, expected: str | None = None) -> Any:
        self._used.add(name)
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise self._error("required key is missing", file=self.file, key=self._k(name), expected=expected)
        return default

    # The accessors are named after the types they return, so inside this class `str` and friends
    # mean the methods: annotations spell the types as builtins.*.
    @overload
    def str(self, name: builtins.str, *, pattern: re.Pattern[builtins.str] | None = None,
            choices: Iterable[builtins.str] | None = None, expected: builtins.str | None = None) -> builtins.str: ...
    @overload
    def str(self, name: builtins.str, default: _D, *, pattern: re.Pattern[builtins.str] | None = None,
            choices: Iterable[builtins.str] | None = None,
            expected: builtins.str | None = None) -> builtins.str | _D: ...

    def str(self, name: builtins.str, default: Any = _MISSING, *, pattern: re.Pattern[builtins.str] | None = None,
            choices: Iterable[builtins.str] | None = None, expected: builtins.str | None = None) -> Any:
        v = self._get(name, default, expected or ("one of " + ", ".join(sorted(choices)) if choices else None))
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, builtins.str) or not v:
            raise self.error(name, "must be a non-empty string", v, expected or "a string")
        if choices is not None and v not in set(choices):
            raise self.error(name, "unknown value", v, "one of " + ", ".join(sorted(choices)))
        if pattern is not None and not pattern.match(v):
            raise self.error(name, "invalid format", v, expected or f"matching {pattern.pattern}")
        return v

    @overload
    def int(self, name: builtins.str, *, min: builtins.int | None = None,
            max: builtins.int | None = None) -> builtins.int: ...
    @overload
    def int(self, name: builtins.str, default: _D, *, min: builtins.int | None = None,
            max: builtins.int | None = None) -> builtins.int | _D: ...

    def int(self, name: builtins.str, default: Any = _MISSING, *, min: builtins.int | None = None,
            max: builtins.int | None = None) -> Any:
        v = self._get(name, default, _range("an integer", min, max))
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, builtins.int) or isinstance(v, builtins.bool):
            raise self.error(name, "must be an integer", v, _range("an integer", min, max))
        if (min is not None and v < min) or (max is not None and v > max):
            raise self.error(name, "out of range", v, _range("an integer", min, max))
        return v

    @overload
    def float(self, name: builtins.str, *, min: builtins.float | None = None, max: builtins.float | None = None,
              exclusive_min: builtins.bool = False) -> builtins.float: ...
    @overload
    def float(self, name: builtins.str, default: _D, *, min: builtins.float | None = None,
              max: builtins.float | None = None, exclusive_min: builtins.bool = False) -> builtins.float | _D: ...

    def float(self, name: builtins.str, default: Any = _MISSING, *, min: builtins.float | None = None,
              max: builtins.float | None = None, exclusive_min: builtins.bool = False) -> Any:
        v = self._get(name, default, _range("a number", min, max, exclusive_min))
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, (builtins.int, builtins.float)) or isinstance(v, builtins.bool) or not math.isfinite(v):
            raise self.error(name, "must be a number", v, _range("a number", min, max))
        if min is not None and (v < min or (exclusive_min and v == min)):
            raise self.error(name, "out of range", v, _range("a number", min, max, exclusive_min))
        if max is not None and v > max:
            raise self.error(name, "out of range", v, _range("a number", min, max, exclusive_min))
        return builtins.float(v)

    def bool(self, name: builtins.str, default: Any = _MISSING) -> builtins.bool:
        v = self._get(name, default)
        if not isinstance(v, builtins.bool):
            raise self.error(name, "must be true or false", v, "a boolean")
        return v

    def str_list(self, name: builtins.str, default: Any = _MISSING) -> tuple[builtins.str, ...]:
        v = self._get(name, default)
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x for x in v):
            raise self.error(name, "must be a list of non-empty strings", v, 'e.g. ["a", "b"]')
        return tuple(v)

    @overload
    def table(self, name: builtins.str, *, required: Literal[True]) -> Table: ...
    @overload
    def table(self, name: builtins.str, *, required: builtins.bool = False) -> Table | None: ...

    def table(self, name: builtins.str, *, required: builtins.bool = False) -> Table | None:
        v = self._get(name, _MISSING if required else None)
        if v is None:
            return None
        if not isinstance(v, Mapping):
            raise self.error(name, "must be a table", v, f"a [{self._k(name)}] section")
        return self.child(v, name)

    def mapping(self, name: builtins.str, default: Any = _MISSING, *,
                expected: builtins.str | None = None) -> dict[builtins.str, Any]:
        """A free-form table (values not checked here), e.g. [thresholds]."""
        v = self._get(name, default)
        if not isinstance(v, Mapping):
            raise self.error(name, "must be a table", v, expected or f"a [{self._k(name)}] table")
        return dict(v)

    def tables(self, name: builtins.str) -> list[Table]:
        v = self._get(name, [])
        if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
            raise self.error(name, "must be an array of tables", v, f"[[{self._k(name)}]] sections")
        return [Table(x, self.file, f"{self._k(name)}[{i}]", error=self._error) for i, x in enumerate(v)]

    def raw(self, name: builtins.str, default: Any = None) -> Any:
        return self._get(name, default)

    def reject_unknown(self) -> None:
        """A typo in a key must not be silently ignored."""
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            raise self._error(
                "unknown key", file=self.file, key=self._k(unknown[0]), value=None,
                expected="one of " + ", ".join(sorted(self._used)) if self._used else "no keys here")


def load_toml(path: str | Path, what: str = "config file", *,
              error: type[ConfigError] = ConfigError) -> Table:
    """Read and parse a TOML file: a missing, unreadable, non-UTF-8 or malformed file is one `error`
    naming the file and saying what it should be."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found", file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what}: {exc}", file=file, expected="a readable UTF-8 TOML file") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} is not valid TOML: {exc}", file=file, expected="a TOML document") from exc
    return Table(data, file, error=error)


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
