"""Boundary checks shared by every place where outside data enters (network, serial line, file).

Each check returns the value (normalised where said) or raises ValueError with a message that
starts with the field's name and says what was expected, so a caller can map it to its own error
(`PayloadError`, `ConfigError`, a refused event) without re-wording it.

Rules, the same on the box and the fleet server:
- text: a `str` that encodes as UTF-8 (no lone surrogates such as "\\ud800", which SQLite and
  every JSON consumer downstream refuse), no NUL, at most `max_len` characters;
- numbers: finite, and within a stated range BEFORE they are converted (a 400-digit JSON integer
  raises OverflowError in `float()` and overflows SQLite's 64-bit INTEGER);
- timestamps: unix seconds within [TS_MIN, TS_MAX];
- ids: by pattern.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from typing import Any

__all__ = [
    "INT64_MAX", "TS_MAX", "TS_MIN", "VALUE_ABS_MAX", "check_float", "check_int", "check_id",
    "check_text", "check_ts", "is_clean_text", "json_object",
]

INT64_MAX = 2**63 - 1
#: Unix seconds accepted as a timestamp: 1970-01-01 (a box without an RTC counts from 0 until its
#: clock is set) up to 2100-01-01. Anything else is a broken clock or a forged value.
TS_MIN = 0.0
TS_MAX = 4_102_444_800.0
#: Largest magnitude a measured value may have (well inside a float64; far above any sensor).
VALUE_ABS_MAX = 1e300


def is_clean_text(text: str) -> bool:
    """True when `text` encodes as UTF-8 and holds no NUL."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: Any, field: str, *, max_len: int, allow_empty: bool = True) -> str:
    """`value` as a clean string of at most `max_len` characters; ValueError naming `field`."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise ValueError(f"{field} must be a non-empty string")
    if len(value) > max_len:
        raise ValueError(f"{field} must be at most {max_len} characters, got {len(value)}")
    if "\x00" in value:
        raise ValueError(f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field} is not valid Unicode text (lone surrogate at index {exc.start})"
        ) from None
    return value


def check_int(value: Any, field: str, *, lo: int = 0, hi: int = INT64_MAX) -> int:
    """`value` as an int in [lo, hi] (bools refused); ValueError naming `field`."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an integer, got {_show(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"{field} must be in {lo}..{hi}, got {_show(value)}")
    return value


def check_float(value: Any, field: str, *, abs_max: float = VALUE_ABS_MAX) -> float:
    """`value` (int or float, not bool) as a finite float with |value| <= abs_max."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{field} must be a number, got {_show(value)}")
    if isinstance(value, int):
        if abs(value) > abs_max:  # compared as int: float() of a huge int raises OverflowError
            raise ValueError(f"{field} must be a finite number of magnitude <= {abs_max:g}, got {_show(value)}")
        return float(value)
    if not math.isfinite(value) or abs(value) > abs_max:
        raise ValueError(f"{field} must be a finite number of magnitude <= {abs_max:g}, got {_show(value)}")
    return value


def check_ts(value: Any, field: str = "ts") -> float:
    """`value` as unix seconds within [TS_MIN, TS_MAX]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{field} must be a finite number (unix seconds), got {_show(value)}")
    if isinstance(value, int):
        ok = TS_MIN <= value <= TS_MAX
    else:
        ok = math.isfinite(value) and TS_MIN <= value <= TS_MAX
    if not ok:
        raise ValueError(
            f"{field} must be a finite number (unix seconds) within 1970..2100, got {_show(value)}"
        )
    return float(value)


def check_id(value: Any, field: str, pattern: re.Pattern[str], expected: str) -> str:
    """`value` if it is a string matching `pattern` in full; `expected` describes the pattern."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{field} must be {expected}, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message (never 400 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def json_object(payload: str | bytes | bytearray, what: str, *, max_bytes: int,
                fields: Collection[str] | None = None) -> dict[str, Any]:
    """`payload` decoded as one JSON object of at most `max_bytes`; with `fields`, no key outside
    them. ValueError naming what is wrong (`what` names the message, e.g. "the health header")."""
    if len(payload) > max_bytes:
        raise ValueError(f"{what} is {len(payload)} bytes, at most {max_bytes}")
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(body).__name__}")
    if fields is not None:
        unknown = set(body) - set(fields)
        if unknown:
            raise ValueError(f"unknown field {sorted(unknown)[0][:32]!r}")
    return body
