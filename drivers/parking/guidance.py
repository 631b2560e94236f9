"""The guidance rule, pure: counts in, what each sign must show out.

    free      = max(0, capacity - occupied)            (never negative: a lot can be over-full)
    zone text = "FULL" when free == 0, else the number   (an override text replaces both)
    LED-485   one zone: the number through FC06 0x0000 (capped at the display's digits),
              a text ("FULL", an override) as raw segments through FC16 0x0080
    Alpha     every zone it shows, "<zone> <text>", joined by two spaces (an override for one zone
              replaces that zone's text only)

Occupancy of a zone comes from its detectors (bays reporting occupied, a faulty bay counted as
occupied: a sign must not send a driver to a space nobody can vouch for) or from its counter
(entries minus exits since the count was last set, with 16-bit wrap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["FULL", "free_spaces", "zone_text", "SignContent", "sign_content", "count_step", "counter_delta"]

FULL = "FULL"
COUNTER_WRAP = 0x10000


def free_spaces(capacity: int, occupied: int) -> int:
    return max(0, capacity - occupied)


def zone_text(capacity: int, occupied: int, override: str | None = None) -> str:
    if override is not None:
        return override
    free = free_spaces(capacity, occupied)
    return FULL if free == 0 else str(free)


@dataclass(frozen=True, slots=True)
class SignContent:
    """What one sign is to show: `number` for the LED-485's int16 register, else `text`."""

    text: str
    number: int | None = None


def sign_content(sign_type: str, zones: Sequence[str], texts: Mapping[str, str], *, digits: int = 4) -> SignContent:
    """The content of one sign from its zones' texts (`zone_text` of each)."""
    if sign_type == "led485":
        text = texts[zones[0]]
        if text.isdigit():
            number = min(int(text), 10**digits - 1)
            return SignContent(str(number), number)
        return SignContent(text)
    if sign_type == "alpha":
        return SignContent("  ".join(f"{z} {texts[z]}" for z in zones))
    raise ValueError(f"unknown sign type {sign_type!r}")


def counter_delta(previous: int, current: int) -> int:
    """Counts since the previous read of a 16-bit counter that wraps at 65536."""
    return (current - previous) % COUNTER_WRAP


def count_step(occupied: int, entries_delta: int, exits_delta: int) -> int:
    """Occupancy after some entries and exits; never below zero (a missed entry must not make
    the lot look fuller than empty for ever)."""
    return max(0, occupied + entries_delta - exits_delta)
