"""The versioned allow-list document a gate device runs: what the fleet sends and what the box stores.

    {"version": 7, "plates": ["鲁A12345", ...], "cards": ["3735928559", ...]}

- `version`: an integer >= 1. A box replaces its list only with a *newer* version, so a re-sent
  document is harmless (same version: refused, nothing changes) and so is an old one delivered late.
- `plates`: licence plates; each is normalised with drivers.gates.normalise_plate (spaces, dots,
  dashes dropped, upper case), so "鲁A-12345" and "鲁a12345" are one entry; 1-32 characters after that.
- `cards`: card numbers as the access controller reports them (cardNo), clean text, 1-32 characters,
  surrounding spaces dropped.
Both lists are optional; a device kind refuses the list it has no reader for (a plate camera's
document has no cards, an access controller's no plates).

Every list is capped (MAX_ENTRIES each) and duplicates are folded. `parse_document` is the one
boundary check, for a document from a command and for one read back from disk alike; its
ValueError names the field ("allowlist.plates[3]: ..."). The document is kept as sorted tuples,
so its JSON form (`to_json`) is canonical: equal lists give equal bytes.

Where it lives: drivers/, next to drivers/gates.py, because the drivers that decide with it (the
plate-camera receiver) load it at build; the agent only hands them the box's data directory.
Storage on disk is drivers/allowlist_store.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.validate import check_int, check_text
from drivers.gates import normalise_plate

__all__ = ["MAX_ENTRIES", "MAX_ITEM_LEN", "AllowList", "parse_document", "normalise_plate_entry", "normalise_plates",
           "normalise_cards"]

#: At most this many plates, and as many cards, in one document (a large estate has a few thousand).
MAX_ENTRIES = 100_000
#: Longest plate (after normalisation) and longest card number.
MAX_ITEM_LEN = 32
#: Highest version accepted: fits a JSON number exactly (2**53) and SQLite's INTEGER.
MAX_VERSION = 2**53
_FIELDS = ("version", "plates", "cards")


@dataclass(frozen=True, slots=True)
class AllowList:
    """One validated document. version 0 is never stored: it stands for "the config's list"."""

    version: int
    plates: tuple[str, ...] = ()
    cards: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """Canonical UTF-8 JSON (sorted entries, no spaces)."""
        return json.dumps({"version": self.version, "plates": list(self.plates), "cards": list(self.cards)},
                          separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def with_plates(self, plates: Iterable[str], version: int) -> AllowList:
        """The same cards, these plates (already normalised: this list's own plus checked ones), a new version."""
        return AllowList(version, tuple(sorted(set(plates))), self.cards)


def _entries(value: Any, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{field} must be a list, got {type(value).__name__}")
    if len(value) > MAX_ENTRIES:
        raise ValueError(f"{field} holds at most {MAX_ENTRIES} entries, got {len(value)}")
    return value


def normalise_plate_entry(plate: Any, field: str) -> str:
    """One plate, checked (clean text) and normalised; ValueError naming `field`."""
    check_text(plate, field, max_len=256)  # clean text first, then the plate rule
    norm = normalise_plate(plate)
    if not norm or len(norm) > MAX_ITEM_LEN:
        raise ValueError(f"{field} is not a plate: {plate[:40]!r} (1-{MAX_ITEM_LEN} characters once spaces, "
                         "dots and dashes are dropped)")
    return norm


def normalise_plates(plates: Iterable[Any], field: str = "allowlist.plates") -> tuple[str, ...]:
    """Plates normalised, checked, duplicates folded, sorted; ValueError naming the entry."""
    return tuple(sorted({normalise_plate_entry(plate, f"{field}[{i}]") for i, plate in enumerate(plates)}))


def normalise_cards(cards: Iterable[Any], field: str = "allowlist.cards") -> tuple[str, ...]:
    """Card numbers stripped, checked, duplicates folded, sorted; ValueError naming the entry."""
    out: set[str] = set()
    for i, card in enumerate(cards):
        where = f"{field}[{i}]"
        text = check_text(card, where, max_len=256).strip()
        if not text or len(text) > MAX_ITEM_LEN:
            raise ValueError(f"{where} is not a card number: {card[:40]!r} (1-{MAX_ITEM_LEN} characters)")
        out.add(text)
    return tuple(sorted(out))


def parse_document(doc: Any, *, plates: bool = True, cards: bool = True) -> AllowList:
    """A document (the decoded JSON object) as an AllowList; ValueError naming the field.

    `cards=False` / `plates=False`: the device kind has no card reader / no plate camera, and a
    document listing some is refused (better than accepting a list that nothing would ever enforce)."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"allowlist must be an object {{version, plates, cards}}, got {type(doc).__name__}")
    unknown = sorted(str(k) for k in doc if k not in _FIELDS)
    if unknown:
        raise ValueError(f"allowlist has an unknown field {unknown[0][:32]!r}; fields: {', '.join(_FIELDS)}")
    if "version" not in doc:
        raise ValueError("allowlist.version is required (an integer >= 1)")
    version = check_int(doc["version"], "allowlist.version", lo=1, hi=MAX_VERSION)
    plate_list = _entries(doc.get("plates", []), "allowlist.plates")
    if plate_list and not plates:
        raise ValueError("allowlist.plates: this device reads no plates; leave plates out")
    card_list = _entries(doc.get("cards", []), "allowlist.cards")
    if card_list and not cards:
        raise ValueError("allowlist.cards: this device has no card reader; leave cards out")
    return AllowList(version, normalise_plates(plate_list), normalise_cards(card_list))
