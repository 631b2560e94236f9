"""Wiegand card formats: 26-bit H10301 and 34-bit, with their parity checks.

A Wiegand frame is a string of bits as the reader pulsed them on D0/D1, most significant first:

    26-bit H10301:  E | facility (8) | card (16) | O
    34-bit:         E | facility (16) | card (16) | O

E is EVEN parity over itself and the first half of the data bits (12 for 26-bit, 16 for 34-bit);
O is ODD parity over itself and the second half. FC 90 / card 324 encodes as
``00101101000000001010001000`` (devices.md).

Readers are wired to the access controller's Wiegand input, not to the box: the controller decodes
the frame and reports the card (its simulator, sim.py, does so with this codec, dropping frames
with bad parity as controllers do). Frames come in as a text of '0'/'1' (what most controllers log)
or as a sequence of 0/1 ints.
Anything else - wrong length, other characters, a parity mismatch - raises `WiegandError`
(a FrameError) naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import FrameError

__all__ = ["Credential", "WiegandError", "FORMATS", "encode", "decode", "encode26", "encode34"]


class WiegandError(FrameError):
    """A Wiegand frame that cannot be decoded (length, characters, parity)."""


@dataclass(frozen=True, slots=True)
class _Format:
    bits: int
    facility_bits: int
    card_bits: int = 16

    @property
    def half(self) -> int:
        return (self.bits - 2) // 2


FORMATS: dict[int, _Format] = {26: _Format(26, 8), 34: _Format(34, 16)}


@dataclass(frozen=True, slots=True)
class Credential:
    """A decoded card: which format, facility code and card number."""

    bits: int
    facility: int
    card: int

    def __post_init__(self) -> None:
        fmt = FORMATS.get(self.bits)
        if fmt is None:
            raise ValueError(f"Wiegand format must be one of {sorted(FORMATS)} bits, got {self.bits}")
        if not 0 <= self.facility < (1 << fmt.facility_bits):
            raise ValueError(
                f"facility code for {self.bits}-bit must be 0..{(1 << fmt.facility_bits) - 1}, got {self.facility}"
            )
        if not 0 <= self.card < (1 << fmt.card_bits):
            raise ValueError(f"card number must be 0..{(1 << fmt.card_bits) - 1}, got {self.card}")


def _as_bits(frame: str | bytes | Sequence[int]) -> str:
    if isinstance(frame, bytes):
        try:
            frame = frame.decode("ascii")
        except UnicodeDecodeError:
            raise WiegandError("Wiegand frame holds non-ASCII bytes; expected '0'/'1' characters") from None
    if isinstance(frame, str):
        text = frame.strip()
        bad = next((c for c in text if c not in "01"), None)
        if bad is not None:
            raise WiegandError(f"Wiegand frame holds {bad!r}; expected only '0'/'1'")
        return text
    if not isinstance(frame, Sequence):
        raise WiegandError(f"Wiegand frame must be '0'/'1' text or a sequence of bits, got {type(frame).__name__}")
    out = []
    for i, bit in enumerate(frame):
        if bit not in (0, 1) or isinstance(bit, float):
            raise WiegandError(f"Wiegand bit {i} is {bit!r}; expected 0 or 1")
        out.append("1" if bit else "0")
    return "".join(out)


def decode(frame: str | bytes | Sequence[int]) -> Credential:
    """Decode a 26- or 34-bit frame, checking both parity bits."""
    bits = _as_bits(frame)
    fmt = FORMATS.get(len(bits))
    if fmt is None:
        raise WiegandError(f"Wiegand frame has {len(bits)} bits; expected one of {sorted(FORMATS)}")
    data = bits[1:-1]
    first, second = data[: fmt.half], data[fmt.half:]
    if (bits[0] + first).count("1") % 2 != 0:
        raise WiegandError(f"{fmt.bits}-bit frame fails the leading even parity check (bits 0..{fmt.half})")
    if (second + bits[-1]).count("1") % 2 != 1:
        raise WiegandError(
            f"{fmt.bits}-bit frame fails the trailing odd parity check (bits {fmt.half + 1}..{fmt.bits - 1})"
        )
    facility = int(data[: fmt.facility_bits], 2)
    card = int(data[fmt.facility_bits:], 2)
    return Credential(fmt.bits, facility, card)


def encode(credential: Credential) -> str:
    """The frame a reader would send for this credential, as '0'/'1' text."""
    fmt = FORMATS[credential.bits]
    data = format(credential.facility, f"0{fmt.facility_bits}b") + format(credential.card, f"0{fmt.card_bits}b")
    first, second = data[: fmt.half], data[fmt.half:]
    even = "1" if first.count("1") % 2 else "0"
    odd = "0" if second.count("1") % 2 else "1"
    return even + data + odd


def encode26(facility: int, card: int) -> str:
    return encode(Credential(26, facility, card))


def encode34(facility: int, card: int) -> str:
    return encode(Credential(34, facility, card))
