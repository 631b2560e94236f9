"""Parking frames, pure: Modbus RTU (detectors, counters, LED-485 display) and the Alpha sign frame.

Everything a parking line carries is built and taken apart here; no I/O, so every rule is
property-tested (tests/test_parking.py). Anything that cannot be decoded is a `FrameError`
naming what was wrong; nothing here raises another exception type on bad bytes.

Modbus RTU (one request on the wire at a time, CRC-16/MODBUS low byte first):
    read holding     FC03  [unit, 03, addr hi, addr lo, count hi, count lo, crc lo, crc hi]
                     reply [unit, 03, byte count, data..., crc]
    write single     FC06  [unit, 06, addr, value, crc] -> the same 8 bytes echoed
    write multiple   FC16  [unit, 10, addr, count, byte count, data..., crc] -> [unit, 10, addr, count, crc]
    exception        [unit, fc | 0x80, code, crc]

LED-485-0xx display (devices-city.md 3b; sman-dk/LED-485_setuptool): FC06 0x0000 = int16 shown;
FC16 0x0080 = raw segments, two characters per register, first character in the high byte,
segment bits a..g = bit 0..6 (`SEGMENTS`, the tool's own table), 1-6 characters.

Alpha sign (devices-city.md 3c; msparks/alphasign packet.py): `NUL x5, SOH, type, address(2),
STX, command, label, data, EOT`; type 'Z' = all sign types, address "00" = broadcast,
command 'A' = write TEXT. No checksum in this form.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from core.errors import DeviceException, FrameError

__all__ = ["crc16", "read_request", "write_single_request", "write_multiple_request", "reply_length",
           "decode_reply", "decode_request", "request_length", "read_reply", "exception_reply",
           "write_reply", "ModbusRequest", "SEGMENTS", "encode_segments",
           "decode_segments", "alpha_frame", "decode_alpha", "AlphaFrame", "ALPHA_TEXT_MAX"]

FC_READ, FC_WRITE_ONE, FC_WRITE_MANY = 0x03, 0x06, 0x10
MAX_READ = 125
NUL, SOH, STX, EOT = b"\x00", b"\x01", b"\x02", b"\x04"
ALPHA_TEXT_MAX = 125

#: 7-segment bits (a = bit 0 .. g = bit 6) per character, from the LED-485 setup tool.
SEGMENTS: dict[str, int] = {
    " ": 0x00, "0": 0x3F, "1": 0x06, "2": 0x5B, "3": 0x4F, "4": 0x66, "5": 0x6D, "6": 0x7D, "7": 0x07,
    "8": 0x7F, "9": 0x6F, "A": 0x77, "B": 0x7C, "C": 0x39, "D": 0x5E, "E": 0x79, "F": 0x71, "G": 0x3D,
    "H": 0x76, "I": 0x10, "J": 0x0E, "K": 0x7A, "L": 0x38, "M": 0x55, "N": 0x54, "O": 0x5C, "P": 0x73,
    "Q": 0x67, "R": 0x50, "S": 0x64, "T": 0x78, "U": 0x3E, "V": 0x62, "W": 0x6A, "X": 0x36, "Y": 0x6E,
    "Z": 0x49,
}
_CHAR_OF = {bits: ch for ch, bits in SEGMENTS.items()}


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _seal(body: bytes) -> bytes:
    return body + struct.pack("<H", crc16(body))


def _check_unit(unit: int) -> None:
    if not 1 <= unit <= 247:
        raise ValueError(f"Modbus unit must be 1..247, got {unit}")


# --- Modbus RTU: requests ---------------------------------------------------------------------------
def read_request(unit: int, address: int, count: int) -> bytes:
    _check_unit(unit)
    if not 0 <= address <= 0xFFFF or not 1 <= count <= MAX_READ or address + count > 0x10000:
        raise ValueError(f"read of {count} register(s) at {address} is outside 1..{MAX_READ} / 0..65535")
    return _seal(struct.pack(">BBHH", unit, FC_READ, address, count))


def write_single_request(unit: int, address: int, value: int) -> bytes:
    _check_unit(unit)
    if not 0 <= address <= 0xFFFF or not 0 <= value <= 0xFFFF:
        raise ValueError(f"FC06 needs address and value 0..65535, got {address}, {value}")
    return _seal(struct.pack(">BBHH", unit, FC_WRITE_ONE, address, value))


def write_multiple_request(unit: int, address: int, values: list[int] | tuple[int, ...]) -> bytes:
    _check_unit(unit)
    if not 1 <= len(values) <= 123 or not all(0 <= v <= 0xFFFF for v in values) or not 0 <= address <= 0xFFFF:
        raise ValueError(f"FC16 needs 1..123 values 0..65535 at 0..65535, got {len(values)} at {address}")
    return _seal(struct.pack(f">BBHHB{len(values)}H", unit, FC_WRITE_MANY, address, len(values),
                             2 * len(values), *values))


@dataclass(frozen=True, slots=True)
class ModbusRequest:
    """A request as a slave sees it (the simulator's side of the codec)."""

    unit: int
    function: int
    address: int
    count: int = 1                     # FC03 / FC16 register count
    values: tuple[int, ...] = ()       # FC06: one value; FC16: the values


def request_length(buf: bytes) -> int | None:
    """How long the request at the start of `buf` is, None while too few bytes have arrived."""
    if len(buf) < 2:
        return None
    if buf[1] in (FC_READ, FC_WRITE_ONE):
        return 8
    if buf[1] == FC_WRITE_MANY:
        return None if len(buf) < 7 else 9 + buf[6]
    raise FrameError(f"unsupported function code {buf[1]:#04x} in request {buf[:8].hex(' ')}")


def decode_request(frame: bytes) -> ModbusRequest:
    _check_crc(frame)
    unit, fc = frame[0], frame[1]
    if fc in (FC_READ, FC_WRITE_ONE) and len(frame) == 8:
        address, word = struct.unpack(">HH", frame[2:6])
        if fc == FC_READ:
            return ModbusRequest(unit, fc, address, word)
        return ModbusRequest(unit, fc, address, 1, (word,))
    if fc == FC_WRITE_MANY and len(frame) >= 9 and frame[6] == len(frame) - 9 and frame[6] % 2 == 0:
        address, count = struct.unpack(">HH", frame[2:6])
        values = struct.unpack(f">{frame[6] // 2}H", frame[7:-2])
        if count != len(values):
            raise FrameError(f"FC16 says {count} registers but carries {len(values)}")
        return ModbusRequest(unit, fc, address, count, tuple(values))
    raise FrameError(f"malformed request {frame[:12].hex(' ')}")


def read_reply(unit: int, values: list[int] | tuple[int, ...]) -> bytes:
    return _seal(struct.pack(f">BBB{len(values)}H", unit, FC_READ, 2 * len(values), *values))


def exception_reply(unit: int, function: int, code: int) -> bytes:
    return _seal(bytes((unit, function | 0x80, code)))


def write_reply(req: ModbusRequest) -> bytes:
    """A slave's confirmation of an FC06 (value echoed) or FC16 (address and count) write."""
    word = req.values[0] if req.function == FC_WRITE_ONE else req.count
    return _seal(struct.pack(">BBHH", req.unit, req.function, req.address, word))


# --- Modbus RTU: replies (the master's side) --------------------------------------------------------
def reply_length(buf: bytes, function: int) -> int | None:
    """Length of the reply to `function` at the start of `buf`; None while it is still incomplete."""
    if len(buf) < 2:
        return None
    if buf[1] == function | 0x80:
        return 5
    if buf[1] != function:
        raise FrameError(f"reply has function {buf[1]:#04x}, expected {function:#04x}: {buf[:8].hex(' ')}")
    if function == FC_READ:
        return None if len(buf) < 3 else 5 + buf[2]
    return 8


def _check_crc(frame: bytes) -> None:
    if len(frame) < 4:
        raise FrameError(f"frame too short ({len(frame)} bytes): {frame.hex(' ')}")
    if struct.unpack("<H", frame[-2:])[0] != crc16(frame[:-2]):
        raise FrameError(f"CRC mismatch in {frame[:12].hex(' ')}")


def decode_reply(frame: bytes, request: bytes) -> tuple[int, ...]:
    """The registers of an FC03 reply (or () for a write's confirmation) to `request`.

    FrameError: bad CRC, wrong unit, wrong length, a confirmation that does not match the request.
    DeviceException: the slave answered with an exception code."""
    _check_crc(frame)
    unit, function = request[0], request[1]
    if frame[0] != unit:
        raise FrameError(f"reply from unit {frame[0]}, asked unit {unit}")
    if frame[1] == function | 0x80:
        raise DeviceException(f"unit {unit} refused function {function:#04x}", frame[2])
    if frame[1] != function:
        raise FrameError(f"reply has function {frame[1]:#04x}, expected {function:#04x}")
    if function == FC_READ:
        count = struct.unpack(">H", request[4:6])[0]
        if frame[2] != 2 * count or len(frame) != 5 + 2 * count:
            raise FrameError(f"unit {unit}: {frame[2]} data bytes for {count} registers")
        return struct.unpack(f">{count}H", frame[3:-2])
    if frame[:6] != request[:6]:
        raise FrameError(f"unit {unit}: write confirmed as {frame[:6].hex(' ')}, sent {request[:6].hex(' ')}")
    return ()


# --- LED-485 raw segments -----------------------------------------------------------------------------
def encode_segments(text: str) -> tuple[int, ...]:
    """Registers for FC16 at 0x0080: two characters per register, high byte first (odd: pad a space)."""
    text = text.upper()
    if not 1 <= len(text) <= 6 or any(ch not in SEGMENTS for ch in text):
        raise ValueError(f"a 7-segment text is 1-6 of space, 0-9, A-Z; got {text!r}")
    if len(text) % 2:
        text += " "
    return tuple(SEGMENTS[text[i]] << 8 | SEGMENTS[text[i + 1]] for i in range(0, len(text), 2))


def decode_segments(registers: tuple[int, ...] | list[int]) -> str:
    """The characters the display lights (trailing blanks dropped); FrameError for unknown patterns."""
    out = []
    for reg in registers:
        for bits in (reg >> 8, reg & 0xFF):
            if bits not in _CHAR_OF:
                raise FrameError(f"segment pattern {bits:#04x} is no character of the LED-485 table")
            out.append(_CHAR_OF[bits])
    return "".join(out).rstrip(" ")


# --- Alpha sign -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AlphaFrame:
    type_code: str
    address: str
    command: str
    label: str
    data: str


def alpha_frame(text: str, *, address: str = "00", label: str = "A", type_code: str = "Z") -> bytes:
    """A write-TEXT frame; `text` is printable ASCII (control codes would be read as protocol)."""
    if len(address) != 2 or any(c not in "0123456789ABCDEFabcdef" for c in address):
        raise ValueError(f"Alpha address is two hex digits, got {address!r}")
    if len(label) != 1 or not (0x20 < ord(label) < 0x7F) or label == "0":
        raise ValueError(f"Alpha file label is one printable character other than '0', got {label!r}")
    if len(text) > ALPHA_TEXT_MAX or not all(0x20 <= ord(c) < 0x7F for c in text):
        raise ValueError(f"Alpha text is at most {ALPHA_TEXT_MAX} printable ASCII characters, got {text!r:.60}")
    body = f"{type_code}{address.upper()}".encode() + STX + f"A{label}{text}".encode()
    return NUL * 5 + SOH + body + EOT


def decode_alpha(frame: bytes) -> AlphaFrame:
    """Take one frame apart (leading NULs, SOH ... EOT); FrameError naming what is wrong."""
    body = frame.lstrip(NUL)
    if body == frame:
        raise FrameError(f"Alpha frame must start with NUL bytes: {frame[:16]!r}")
    if not body.startswith(SOH) or not body.endswith(EOT) or len(body) < 8:
        raise FrameError(f"Alpha frame needs SOH ... EOT: {body[:24]!r}")
    head, stx, rest = body[1:-1].partition(STX)
    if not stx or len(head) != 3 or len(rest) < 2:
        raise FrameError(f"Alpha frame header must be type + 2-digit address + STX: {body[:24]!r}")
    try:
        type_code, address = head[:1].decode("ascii"), head[1:].decode("ascii")
        command, label, data = rest[:1].decode("ascii"), rest[1:2].decode("ascii"), rest[2:].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError(f"Alpha frame is not ASCII: {body[:24]!r}") from None
    if any(c not in "0123456789ABCDEF" for c in address.upper()):
        raise FrameError(f"Alpha address {address!r} is not two hex digits")
    if any(not 0x20 <= ord(c) < 0x7F for c in data):
        raise FrameError(f"Alpha data holds control codes this driver never sends: {data[:40]!r}")
    return AlphaFrame(type_code, address.upper(), command, label, data)
