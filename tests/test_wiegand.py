"""Wiegand 26 (H10301) and 34: devices.md example, parity checks, round trips, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import FrameError
from drivers.access_controller.wiegand import Credential, WiegandError, decode, encode, encode26, encode34

EXAMPLE = "00101101000000001010001000"  # devices.md: FC 90 / card 324


def test_devices_md_example_decodes_and_encodes() -> None:
    assert decode(EXAMPLE) == Credential(26, 90, 324)
    assert encode26(90, 324) == EXAMPLE
    assert decode([int(b) for b in EXAMPLE]) == Credential(26, 90, 324)
    assert decode(EXAMPLE.encode()) == Credential(26, 90, 324)


@pytest.mark.parametrize("i", range(26))
def test_every_single_flipped_bit_is_a_parity_error(i: int) -> None:
    flipped = EXAMPLE[:i] + ("1" if EXAMPLE[i] == "0" else "0") + EXAMPLE[i + 1:]
    with pytest.raises(WiegandError, match="parity"):
        decode(flipped)


def test_parity_errors_name_which_half() -> None:
    with pytest.raises(WiegandError, match="leading even"):
        decode("1" + EXAMPLE[1:])
    with pytest.raises(WiegandError, match="trailing odd"):
        decode(EXAMPLE[:-1] + "1")


def test_34_bit_layout() -> None:
    frame = encode34(0xABCD, 0x1234)
    assert len(frame) == 34 and frame[1:17] == format(0xABCD, "016b") and frame[17:33] == format(0x1234, "016b")
    assert frame[:17].count("1") % 2 == 0 and frame[17:].count("1") % 2 == 1
    assert decode(frame) == Credential(34, 0xABCD, 0x1234)


@pytest.mark.parametrize("frame, fragment", [
    ("0" * 25, "25 bits"), ("0" * 27, "27 bits"), ("00101101000000001010001002", "'2'"), ([0, 1, 2] * 9, "bit 2"),
    (b"\xff" * 26, "non-ASCII"), (12345, "sequence of bits"), ([0.0] * 26, "bit 0"),
])
def test_malformed_frames_are_frame_errors(frame, fragment: str) -> None:
    with pytest.raises(FrameError, match=fragment):
        decode(frame)


@pytest.mark.parametrize("bits, facility, card", [(26, 256, 1), (26, 1, 65536), (34, 65536, 0), (30, 1, 1),
                                                  (26, -1, 0)])
def test_out_of_range_credentials_are_refused(bits: int, facility: int, card: int) -> None:
    with pytest.raises(ValueError):
        Credential(bits, facility, card)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(26, 255), (34, 65535)]).flatmap(
    lambda f: st.tuples(st.just(f[0]), st.integers(0, f[1]), st.integers(0, 65535))))
def test_round_trip(args) -> None:
    cred = Credential(*args)
    frame = encode(cred)
    assert len(frame) == cred.bits and decode(frame) == cred


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="01", min_size=26, max_size=26) | st.text(alphabet="01", min_size=34, max_size=34)
       | st.text(max_size=40) | st.lists(st.integers(-2, 3), max_size=40) | st.binary(max_size=40))
def test_garbage_only_frame_error(frame) -> None:
    try:
        cred = decode(frame)
    except FrameError:
        return
    assert encode(cred) == (frame.strip() if isinstance(frame, str) else frame.decode().strip()
                            if isinstance(frame, bytes) else "".join(map(str, frame)))


async def test_a_reader_frame_reaches_the_controller_as_its_card_number() -> None:
    """The access controller's Wiegand input (its simulator): a good frame is reported as the card's
    decimal number (facility << 16 | card), decided against the controller's card list; a frame with
    a flipped bit is dropped by the controller, as real ones do, and counted."""
    import json

    from drivers.access_controller.sim import AccessControllerSim

    frame = "00101101000000001010001000"  # FC 90 / card 324 (devices.md)
    assert 90 << 16 | 324 == 5898564
    async with AccessControllerSim(cards=frozenset({"5898564"})) as sim:
        assert await sim.wiegand(frame) == "valid_card"
        assert await sim.wiegand(encode26(90, 325)) == "unknown_card"
        flipped = frame[:5] + ("1" if frame[5] == "0" else "0") + frame[6:]
        assert await sim.wiegand(flipped) is None and await sim.wiegand("0101") is None
        assert sim.bad_frames == 2
        cards = [json.loads(body)["AccessControllerEvent"]["cardNo"] for body in sim.pushed]
        assert cards == ["5898564", "5898565"]
