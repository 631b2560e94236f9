"""docs/device-firmware.md lists every device kind with the very reason the box gives."""

from __future__ import annotations

from pathlib import Path

from drivers.registry import KINDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "device-firmware.md"


def test_the_doc_names_every_kind_with_the_reason_the_box_gives() -> None:
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[3].strip()
            for line in DOC.read_text().splitlines() if line.startswith("| `")}
    assert rows == {k.name: k.firmware_refusal for k in KINDS.values()}
