"""GB/T 20999-2017 traffic signal controller frames: build, parse, escape, CRC, data items.

Pure functions only; the TCP client is drivers/gbt20999_driver.py.

    7E | length(2) | version(2) 0x0102 | centre(1) | controller(4) | road(1) | seq(1) | type(1)
       | item count(1) | items... | CRC16(2) | 7D                                   (big-endian)
    item = index(1) | length(1) | class(1) | object(1) | attribute(1) | element(1) | data

`length` counts the bytes from itself through the last item (CRC and delimiters excluded); the
item length counts class..data. CRC-16 polynomial 0x1005 (x^16+x^12+x^2+1), init 0, no
reflection, over length..data. On TCP and RS-232, every 7E/7D/5C between the delimiters (CRC
included) is preceded by 0x5C; the escape bytes are not counted by the CRC. UDP carries no
escapes (`escaped=False`). Both devices.md example frames are reproduced byte for byte by the tests.

Where the one public implementation (RVDataFusionServer) differs: it counts escape bytes into
`length` and writes the CRC unescaped; we follow the standard's text, and `decode_frame` accepts
either length so such a peer still interoperates.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from core.errors import FrameError

__all__ = [
    "FrameType", "DataItem", "Frame", "crc16", "escape", "unescape", "encode_frame", "decode_frame",
    "FrameSplitter", "ItemId", "RUN_MODE", "CURRENT_PLAN", "CURRENT_STAGE", "DETECTOR_FLOW",
    "DETECTOR_OCCUPANCY", "DETECTOR_SPEED", "PLAN_CYCLE", "PLAN_COORD_SEQ", "PLAN_OFFSET",
    "ASSIGN_STAGE", "ASSIGN_PLAN", "ASSIGN_MODE", "ITEM_SIZES", "MODES", "ERRORS", "VERSION",
]

START, END, ESC = 0x7E, 0x7D, 0x5C
VERSION = 0x0102
_HEADER = 13  # length(2) version(2) centre(1) controller(4) road(1) seq(1) type(1) count(1)
MAX_BODY = 0xFFFF


class FrameType(IntEnum):
    QUERY = 0x10
    QUERY_REPLY = 0x20
    QUERY_ERROR = 0x21
    SET = 0x30
    SET_REPLY = 0x40
    SET_ERROR = 0x41        # in the RVDataFusionServer implementation, not in devices.md's list
    REPORT = 0x60           # unsolicited (主动上报)
    HEARTBEAT = 0x70        # heartbeat query
    HEARTBEAT_REPLY = 0x80


# (class, object, attribute): the element byte indexes the row (detector, plan); 0 = all/none.
ItemId = tuple[int, int, int]
RUN_MODE: ItemId = (0x0D, 0x02, 0x02)
CURRENT_PLAN: ItemId = (0x0D, 0x02, 0x03)
CURRENT_STAGE: ItemId = (0x0D, 0x02, 0x04)
DETECTOR_FLOW: ItemId = (0x0E, 0x02, 0x02)       # vehicles in the statistics period
DETECTOR_OCCUPANCY: ItemId = (0x0E, 0x02, 0x03)  # percent
DETECTOR_SPEED: ItemId = (0x0E, 0x02, 0x04)      # km/h
PLAN_CYCLE: ItemId = (0x09, 0x02, 0x03)          # s
PLAN_COORD_SEQ: ItemId = (0x09, 0x02, 0x04)
PLAN_OFFSET: ItemId = (0x09, 0x02, 0x05)         # s
ASSIGN_STAGE: ItemId = (0x11, 0x02, 0x00)
ASSIGN_PLAN: ItemId = (0x11, 0x03, 0x00)
ASSIGN_MODE: ItemId = (0x11, 0x04, 0x00)
ITEM_SIZES: dict[ItemId, int] = {
    RUN_MODE: 1, CURRENT_PLAN: 1, CURRENT_STAGE: 1, DETECTOR_FLOW: 2, DETECTOR_OCCUPANCY: 1,
    DETECTOR_SPEED: 2, PLAN_CYCLE: 2, PLAN_COORD_SEQ: 1, PLAN_OFFSET: 2, ASSIGN_STAGE: 1,
    ASSIGN_PLAN: 1, ASSIGN_MODE: 1,
}
MODES = {
    0x10: "centre", 0x11: "centre_timetable", 0x12: "centre_optimisation", 0x13: "centre_coordination",
    0x14: "centre_adaptive", 0x15: "centre_manual", 0x20: "local", 0x21: "local_fixed_cycle",
    0x22: "local_actuated", 0x23: "local_coordination", 0x24: "local_adaptive", 0x25: "local_manual",
    0x30: "special", 0x31: "flash", 0x32: "all_red", 0x33: "all_off",
}
ERRORS = {0x10: "bad value", 0x11: "wrong length", 0x12: "overflow", 0x20: "read only", 0x30: "no such object",
          0x40: "error", 0x50: "control failed"}


def crc16(data: bytes, poly: int = 0x1005, init: int = 0) -> int:
    crc = init
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def escape(body: bytes) -> bytes:
    out = bytearray()
    for b in body:
        if b in (START, END, ESC):
            out.append(ESC)
        out.append(b)
    return bytes(out)


def unescape(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        b = body[i]
        if b == ESC:
            if i + 1 >= len(body) or body[i + 1] not in (START, END, ESC):
                raise FrameError(f"escape byte 0x5C at offset {i} is not followed by 7E/7D/5C")
            b = body[i + 1]
            i += 1
        elif b in (START, END):
            raise FrameError(f"unescaped delimiter 0x{b:02X} inside the frame at offset {i}")
        out.append(b)
        i += 1
    return bytes(out)


@dataclass(frozen=True, slots=True)
class DataItem:
    index: int
    cls: int
    obj: int
    attr: int
    element: int = 0
    data: bytes = b""

    def __post_init__(self) -> None:
        for name in ("index", "cls", "obj", "attr", "element"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFF:
                raise ValueError(f"data item {name} must be 0..255, got {v}")
        if len(self.data) > 0xFF - 4:
            raise ValueError(f"data item value is at most 251 bytes, got {len(self.data)}")

    @property
    def item_id(self) -> ItemId:
        return (self.cls, self.obj, self.attr)

    def value(self) -> int:
        """The data as a big-endian unsigned integer, checked against the item's declared size."""
        size = ITEM_SIZES.get(self.item_id)
        if size is not None and len(self.data) != size:
            raise FrameError(f"item {self.label()} carries {len(self.data)} bytes; expected {size}")
        if not self.data:
            raise FrameError(f"item {self.label()} carries no value")
        return int.from_bytes(self.data, "big")

    def label(self) -> str:
        return f"{self.cls:02X}{self.obj:02X}{self.attr:02X}{self.element:02X}"


def item_with_value(index: int, item: ItemId, element: int, value: int) -> DataItem:
    size = ITEM_SIZES[item]
    if not 0 <= value < (1 << (8 * size)):
        raise ValueError(f"value {value} does not fit the {size}-byte item {item}")
    return DataItem(index, *item, element, value.to_bytes(size, "big"))


@dataclass(frozen=True, slots=True)
class Frame:
    ftype: FrameType
    seq: int
    items: tuple[DataItem, ...] = ()
    centre: int = 1
    controller: int = 1
    road: int = 1
    version: int = VERSION

    def __post_init__(self) -> None:
        for name, top in (("seq", 0xFF), ("centre", 0xFF), ("road", 0xFF), ("controller", 0xFFFFFFFF),
                          ("version", 0xFFFF)):
            v = getattr(self, name)
            if not 0 <= v <= top:
                raise ValueError(f"frame {name} must be 0..{top}, got {v}")
        if len(self.items) > 0xFF:
            raise ValueError(f"a frame carries at most 255 items, got {len(self.items)}")


def _body(frame: Frame) -> bytes:
    items = b"".join(bytes([it.index, 4 + len(it.data), it.cls, it.obj, it.attr, it.element]) + it.data
                     for it in frame.items)
    length = _HEADER + len(items)
    if length > MAX_BODY:
        raise ValueError(f"frame body of {length} bytes exceeds 65535")
    return (length.to_bytes(2, "big") + frame.version.to_bytes(2, "big") + bytes([frame.centre])
            + frame.controller.to_bytes(4, "big") + bytes([frame.road, frame.seq, int(frame.ftype),
                                                           len(frame.items)]) + items)


def encode_frame(frame: Frame, *, escaped: bool = True) -> bytes:
    body = _body(frame)
    inner = body + crc16(body).to_bytes(2, "big")
    return bytes([START]) + (escape(inner) if escaped else inner) + bytes([END])


def decode_frame(raw: bytes, *, escaped: bool = True) -> Frame:
    """Parse one complete frame (7E..7D). FrameError names the first thing wrong."""
    if len(raw) < 2 or raw[0] != START or raw[-1] != END:
        raise FrameError(f"frame must start with 7E and end with 7D: {raw[:8].hex(' ')}")
    wire = raw[1:-1]
    inner = unescape(wire) if escaped else wire
    if len(inner) < _HEADER + 2:
        raise FrameError(f"frame too short: {len(inner)} bytes between delimiters, need at least {_HEADER + 2}")
    body, crc = inner[:-2], int.from_bytes(inner[-2:], "big")
    length = int.from_bytes(body[:2], "big")
    if length != len(body) and length != len(wire) - 2:
        raise FrameError(f"length field says {length} bytes, frame carries {len(body)}")
    want = crc16(body)
    if crc != want:
        raise FrameError(f"CRC mismatch: frame says {crc:04X}, content gives {want:04X}")
    try:
        ftype = FrameType(body[11])
    except ValueError:
        raise FrameError(f"unknown frame type 0x{body[11]:02X}") from None
    count, pos, items = body[12], _HEADER, []
    for n in range(count):
        if pos + 2 > len(body):
            raise FrameError(f"item {n + 1} of {count} is missing")
        index, size = body[pos], body[pos + 1]
        if size < 4:
            raise FrameError(f"item {n + 1} length {size} is shorter than class..element (4)")
        end = pos + 2 + size
        if end > len(body):
            raise FrameError(f"item {n + 1} length {size} runs past the end of the frame")
        c, o, a, e = body[pos + 2:pos + 6]
        items.append(DataItem(index, c, o, a, e, bytes(body[pos + 6:end])))
        pos = end
    if pos != len(body):
        raise FrameError(f"{len(body) - pos} stray bytes after the last of {count} items")
    return Frame(ftype, body[10], tuple(items), centre=body[4], controller=int.from_bytes(body[5:9], "big"),
                 road=body[9], version=int.from_bytes(body[2:4], "big"))


class FrameSplitter:
    """Cut a TCP/serial byte stream into frames. feed() returns decoded frames and FrameErrors."""

    def __init__(self, *, escaped: bool = True, max_frame: int = 2 * MAX_BODY) -> None:
        self._buf = bytearray()
        self._escaped = escaped
        self._max = max_frame

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        self._buf += data
        out: list[Frame | FrameError] = []
        while True:
            start = self._buf.find(START)
            if start < 0:
                self._buf.clear()
                return out
            if start:
                out.append(FrameError(f"{start} bytes of noise before a frame start"))
                del self._buf[:start]
            end = self._find_end()
            if end is None:
                if len(self._buf) > self._max:
                    out.append(FrameError(f"no frame end within {self._max} bytes; dropped"))
                    self._buf.clear()
                return out
            raw = bytes(self._buf[:end + 1])
            del self._buf[:end + 1]
            try:
                out.append(decode_frame(raw, escaped=self._escaped))
            except FrameError as exc:
                out.append(exc)

    def _find_end(self) -> int | None:
        i = 1
        while i < len(self._buf):
            b = self._buf[i]
            if self._escaped and b == ESC:
                i += 2
                continue
            if b == END:
                return i
            if b == START:  # a new frame began before this one ended: drop the fragment
                del self._buf[:i]
                i = 1
                continue
            i += 1
        return None
