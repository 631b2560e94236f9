"""The parking kind's pure parts: Modbus RTU / LED-485 / Alpha frames (round trips, junk, bit flips)
and the guidance rule (free = capacity - occupied, FULL, overrides, counter wrap)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.errors import DeviceException, FrameError
from drivers.parking import codec, guidance


# --- codec ---------------------------------------------------------------------------------------
def test_crc_matches_published_frames() -> None:
    # devices-city.md 2c (KELLER) and devices.md (Renke): real request frames with their CRC
    assert codec.read_request(1, 2, 2) == bytes.fromhex("01 03 00 02 00 02 65 CB")
    assert codec.read_request(1, 0, 1) == bytes.fromhex("01 03 00 00 00 01 84 0A")


units = st.integers(1, 247)
words = st.integers(0, 0xFFFF)


@given(units, st.integers(0, 0xFFFF - 125), st.lists(words, min_size=1, max_size=125))
def test_read_round_trip(unit: int, address: int, values: list[int]) -> None:
    req = codec.read_request(unit, address, len(values))
    assert codec.decode_request(req) == codec.ModbusRequest(unit, 3, address, len(values))
    reply = codec.read_reply(unit, values)
    assert codec.reply_length(reply[:3], 3) == len(reply)
    assert codec.decode_reply(reply, req) == tuple(values)


@given(units, words, st.lists(words, min_size=1, max_size=123))
def test_write_round_trip(unit: int, address: int, values: list[int]) -> None:
    for req in (codec.write_single_request(unit, address, values[0]),
                codec.write_multiple_request(unit, address, values)):
        decoded = codec.decode_request(req)
        assert decoded.unit == unit and decoded.address == address
        assert decoded.values == ((values[0],) if decoded.function == 6 else tuple(values))
        assert codec.decode_reply(codec.write_reply(decoded), req) == ()
        assert codec.request_length(req) == len(req)


@given(st.text(alphabet=sorted(codec.SEGMENTS), min_size=1, max_size=6))
def test_segments_round_trip(text: str) -> None:
    assert codec.decode_segments(codec.encode_segments(text)) == text.rstrip(" ")


@given(st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)], max_size=125),
       st.sampled_from(["00", "01", "7F", "FF"]), st.sampled_from(list("AB1z")))
def test_alpha_round_trip(text: str, address: str, label: str) -> None:
    frame = codec.alpha_frame(text, address=address, label=label)
    assert frame.startswith(b"\0\0\0\0\0\x01Z") and frame.endswith(b"\x04")
    assert codec.decode_alpha(frame) == codec.AlphaFrame("Z", address, "A", label, text)


@given(st.binary(max_size=300))
@hsettings(max_examples=400)
def test_junk_is_a_frame_error_never_a_crash(junk: bytes) -> None:
    request = codec.read_request(2, 0, 2)
    for decode in (lambda: codec.decode_reply(junk, request), lambda: codec.decode_request(junk),
                   lambda: codec.decode_alpha(junk), lambda: codec.reply_length(junk, 3),
                   lambda: codec.request_length(junk)):
        with contextlib.suppress(FrameError, DeviceException):
            decode()
    if len(junk) % 2 == 0 and junk:
        with contextlib.suppress(FrameError):
            codec.decode_segments([junk[i] << 8 | junk[i + 1] for i in range(0, len(junk), 2)])


@given(st.lists(words, min_size=1, max_size=10), st.data())
def test_a_flipped_bit_is_caught(values: list[int], data: st.DataObject) -> None:
    req = codec.read_request(5, 100, len(values))
    reply = bytearray(codec.read_reply(5, values))
    bit = data.draw(st.integers(0, len(reply) * 8 - 1))
    reply[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FrameError):
        codec.decode_reply(bytes(reply), req)


def test_reply_errors_say_what_is_wrong() -> None:
    req = codec.read_request(2, 0, 2)
    with pytest.raises(FrameError, match="unit 9"):
        codec.decode_reply(codec.read_reply(9, [0, 1]), req)
    with pytest.raises(FrameError, match="4 data bytes for 2|6 data bytes for 2"):
        codec.decode_reply(codec.read_reply(2, [0, 1, 2]), req)
    with pytest.raises(DeviceException) as info:
        codec.decode_reply(codec.exception_reply(2, 3, 2), req)
    assert info.value.code == 2
    with pytest.raises(FrameError, match="SOH"):
        codec.decode_alpha(b"\0\0\0hello\x04")
    with pytest.raises(ValueError):
        codec.encode_segments("P@RK")


# --- the guidance rule ---------------------------------------------------------------------------
@given(st.integers(0, 32767), st.integers(0, 40000))
def test_free_is_never_negative_and_full_at_zero(capacity: int, occupied: int) -> None:
    free = guidance.free_spaces(capacity, occupied)
    assert free == max(0, capacity - occupied)
    assert (guidance.zone_text(capacity, occupied) == "FULL") == (free == 0)


def test_sign_content_per_zone_and_override() -> None:
    texts = {"A": guidance.zone_text(8, 3), "B": guidance.zone_text(5, 9, None), "C": guidance.zone_text(5, 0, "SHUT")}
    assert guidance.sign_content("led485", ("A",), texts) == guidance.SignContent("5", 5)
    assert guidance.sign_content("led485", ("B",), texts) == guidance.SignContent("FULL")
    assert guidance.sign_content("led485", ("A",), {"A": "12345"}, digits=4) == guidance.SignContent("9999", 9999)
    assert guidance.sign_content("alpha", ("A", "B", "C"), texts).text == "A 5  B FULL  C SHUT"
    assert guidance.counter_delta(65534, 2) == 4
    assert guidance.count_step(1, 0, 3) == 0
