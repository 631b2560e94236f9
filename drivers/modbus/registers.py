"""Modbus register facts the profile loader and the codec both need (so neither imports the other)."""

from __future__ import annotations

__all__ = ["MAX_READ_REGISTERS", "RAW_RANGE", "REGISTER_COUNT", "WORD_ORDERS"]

REGISTER_COUNT: dict[str, int] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2}
WORD_ORDERS: tuple[str, ...] = ("ABCD", "CDAB", "BADC", "DCBA")
# Range of the raw integer of each type; for f32 the range of its 32-bit pattern.
RAW_RANGE: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF), "s16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF), "s32": (-0x8000_0000, 0x7FFF_FFFF), "f32": (0, 0xFFFF_FFFF),
}
MAX_READ_REGISTERS = 125  # function 03/04 protocol limit
