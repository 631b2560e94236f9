"""WXT530 ASCII + NMEA codecs (devices.md examples, properties) and the serial driver on a pty."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import CommandRefused, DeviceTimeout, FrameError, LinkError
from core.reading import Quality
from drivers.base import Driver
from drivers.wxt_serial import nmea
from drivers.wxt_serial.codec import DECIMALS, UNITS, format_composite, parse_composite
from drivers.wxt_serial.driver import WxtSerialDriver
from drivers.wxt_serial.settings import WxtSerialSettings
from drivers.wxt_serial.sim import Fault, WxtSerialSim

ASCII_EXAMPLE = (
    "0R0,Dn=000#,Dm=106#,Dx=182#,Sn=1.1#,Sm=4.0#,Sx=6.6#,Ta=16.0C,Ua=50.0P,Pa=1018.1H,Rc=0.00M,Rd=0s,"
    "Ri=0.0M,Hc=0.0M,Hd=0s,Hi=0.0M,Rp=0.0M,Hp=0.0M,Th=15.6C,Vh=0.0N,Vs=15.2V,Vr=3.498V,Id=Ant"
)
XDR = "$WIXDR,A,302,D,0,A,320,D,1,A,330,D,2,S,0.1,M,0,S,0.2,M,1,S,0.2,M,2*54"
MDA = "$WIMDA,29.7544,I,1.0076,B,35.5,C,,,42.1,,20.6,C,116.4,T,107.7,M,1.2,N,0.6,M*66"
MWV = "$WIMWV,041.1,R,01.0,N,A*16"


# --- ASCII codec ---------------------------------------------------------------------------------
def test_devices_md_composite_decodes_with_invalid_markers() -> None:
    c = parse_composite(ASCII_EXAMPLE + "\r\n")
    assert (c.address, c.message, c.damaged) == ("0", 0, ())
    for code in ("Dn", "Dm", "Dx", "Sn", "Sm", "Sx"):  # '#': invalid, never a number
        assert c.fields[code].value is None and c.fields[code].quality is Quality.MISSING
    expect = {"Ta": (16.0, "degC"), "Ua": (50.0, "%RH"), "Pa": (1018.1, "hPa"), "Rc": (0.0, "mm"),
              "Th": (15.6, "degC"), "Vs": (15.2, "V"), "Vr": (3.498, "V"), "Rd": (0.0, "s")}
    for code, (value, unit) in expect.items():
        assert (c.fields[code].value, c.fields[code].unit, c.fields[code].quality) == (value, unit, Quality.GOOD)
    assert c.text == {"Id": "Ant"}
    assert len(c.fields) == 21


def test_corrupted_field_is_marked_bad_and_the_rest_survive() -> None:
    c = parse_composite("0R0,Dn=0m=032D,Dx=182D,Sn=1.1M,Ta=16.0C")
    assert c.fields["Dn"].value is None and c.fields["Dn"].quality is Quality.COMM_FAILURE
    assert "Dn=0m=032D" in c.fields["Dn"].note
    assert "Dm" not in c.fields  # its bytes were lost: absent, not invented
    assert c.fields["Dx"].value == 182.0 and c.fields["Sn"].value == 1.1 and c.fields["Ta"].value == 16.0
    assert len(c.damaged) == 1


@pytest.mark.parametrize("line, fragment", [
    ("0R0,Ta=16.0X", "unit letter 'X'"), ("0R0,Ta=16.0C,Ta=17.0C", "repeated"), ("0R0,Ta=,Ua=1.0P", "corrupted"),
])
def test_bad_fields_are_named(line: str, fragment: str) -> None:
    c = parse_composite(line)
    assert any(fragment in d for d in c.damaged)


@pytest.mark.parametrize("line", ["", "garbage", "R0,Ta=1C", "0TX,Rain reset", "$WIMWV,1*00"])
def test_non_data_lines_raise_frame_error(line: str) -> None:
    with pytest.raises(FrameError, match="not a WXT data message"):
        parse_composite(line)


_code = st.sampled_from(sorted(DECIMALS))


@st.composite
def _fields(draw):
    codes = draw(st.lists(_code, min_size=1, max_size=12, unique=True))
    out = []
    for code in codes:
        value = draw(st.none() | st.floats(0, 359 if code.startswith("D") else 2000, allow_nan=False))
        out.append((code, value, draw(st.sampled_from(sorted(UNITS[code])))))
    return out


@settings(max_examples=200, deadline=None)
@given(_fields())
def test_composite_round_trip(fields) -> None:
    c = parse_composite(format_composite("0", fields))
    assert c.damaged == ()
    for code, value, letter in fields:
        m = c.fields[code]
        if value is None:
            assert m.value is None and m.quality is Quality.MISSING
        else:
            tol = 0.5 if code.startswith("D") else 10 ** -DECIMALS[code] / 2 + 1e-9
            expected = round(value) % 360 if code.startswith("D") else value
            assert m.unit == UNITS[code][letter] and abs(m.value - expected) <= tol


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120) | st.binary(max_size=120).map(lambda b: "0R0," + b.decode("latin-1")))
def test_composite_garbage_only_frame_error(text: str) -> None:
    try:
        c = parse_composite(text)
    except FrameError:
        return
    for m in c.fields.values():
        assert m.value is None or math.isfinite(m.value)


# --- NMEA codec ----------------------------------------------------------------------------------
def test_devices_md_sentences_all_carry_valid_checksums() -> None:
    # Checked by hand: XOR of the bodies is 0x54, 0x66, 0x16 - all three example lines are valid
    # (the wrong checksum devices.md warns about is in the Vaisala manual, not in these lines).
    for line, want in ((XDR, 0x54), (MDA, 0x66), (MWV, 0x16)):
        assert nmea.checksum(line[1:line.index("*")]) == want
        nmea.parse_sentence(line)


def test_devices_md_sentences_decode() -> None:
    xdr = {m.code: (m.value, m.unit) for m in nmea.decode(XDR)}
    assert xdr == {"Dn": (302.0, "deg"), "Dm": (320.0, "deg"), "Dx": (330.0, "deg"),
                   "Sn": (0.1, "m/s"), "Sm": (0.2, "m/s"), "Sx": (0.2, "m/s")}
    mda = {m.code: (m.value, m.unit) for m in nmea.decode(MDA)}
    assert mda["Pa"] == (1.0076, "bar") and mda["Ta"] == (35.5, "degC") and mda["Ua"] == (42.1, "%RH")
    assert mda["Td"] == (20.6, "degC") and mda["Dm"] == (116.4, "deg") and mda["Sm"] == (0.6, "m/s")
    mwv = {m.code: (m.value, m.unit) for m in nmea.decode(MWV)}
    assert mwv == {"Dm": (41.1, "deg"), "Sm": (1.0, "knot")}


@pytest.mark.parametrize("line, fragment", [
    (MWV.replace("*16", "*17"), "checksum mismatch"),
    (MWV.replace("041.1", "041.2"), "checksum mismatch"),
    (MWV.replace("*16", ""), "no '\\*hh'"),
    (MWV[1:], "must start with"),
    (MWV.replace("*16", "*1G"), "two hex digits"),
    (nmea.build_sentence("WI", "MWV", ["041.1", "X", "01.0", "N", "A"]), "reference"),
    (nmea.build_sentence("WI", "XDR", ["A", "1", "D"]), "quadruplets"),
    (nmea.build_sentence("WI", "GGA", ["1"]), "unsupported"),
    (nmea.build_sentence("WI", "MWV", ["x", "R", "01.0", "N", "A"]), "not a number"),
])
def test_bad_sentences_raise_frame_error_naming_the_fault(line: str, fragment: str) -> None:
    with pytest.raises(FrameError, match=fragment):
        nmea.decode(line)


def test_mwv_status_v_is_missing() -> None:
    ms = nmea.decode(nmea.build_sentence("WI", "MWV", ["041.1", "R", "01.0", "N", "V"]))
    assert all(m.value is None and m.quality is Quality.MISSING for m in ms)


_field_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*!,"), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["MWV", "MDA", "XDR", "ZZZ"]), st.lists(_field_text, max_size=24))
def test_checksummed_garbage_only_frame_error(kind: str, fields: list[str]) -> None:
    line = nmea.build_sentence("WI", kind, fields)
    assert nmea.parse_sentence(line).fields == tuple(fields)  # framing round trip
    with contextlib.suppress(FrameError):
        nmea.decode(line)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100) | st.text(max_size=100))
def test_nmea_garbage_only_frame_error(data) -> None:
    with contextlib.suppress(FrameError):
        nmea.decode(data)


# --- driver against the simulator on a pty -------------------------------------------------------
T0 = 1_750_000_000.0


def _driver(sim: WxtSerialSim, **kw) -> WxtSerialDriver:
    kw.setdefault("baudrate", sim.baudrate)
    kw.setdefault("timeout_s", 0.5)
    return WxtSerialDriver(WxtSerialSettings(name="wxt1", port=sim.port, mode=sim.protocol, **kw), clock=lambda: T0)


async def test_ascii_poll_matches_the_weather() -> None:
    async with WxtSerialSim(clock=lambda: T0) as sim:
        drv = _driver(sim)
        await drv.open()
        try:
            readings = {r.point: r for r in await drv.read()}
        finally:
            await drv.close()
        truth = sim.values()
        assert sim.requests == ["0R0"]
        assert abs(readings["Ta"].value - truth["Ta"]) <= 0.05 and readings["Ta"].unit == "degC"
        assert abs(readings["Pa"].value - truth["Pa"]) <= 0.05 and readings["Pa"].unit == "hPa"
        assert abs(readings["Sm"].value - truth["Sm"]) <= 0.05 and readings["Sm"].unit == "m/s"
        assert abs(readings["Ua"].value - truth["Ua"]) <= 0.05
        assert all(r.device == "wxt1" and r.ts == T0 for r in readings.values())


async def test_nmea_poll_matches_the_weather() -> None:
    async with WxtSerialSim(clock=lambda: T0, protocol="nmea") as sim:
        drv = _driver(sim, points=("Dm", "Sm", "Ta", "Ua", "Pa", "Rc"))
        await drv.open()
        try:
            readings = {r.point: r for r in await drv.read()}
        finally:
            await drv.close()
        truth = sim.values()
        assert abs(readings["Ta"].value - truth["Ta"]) <= 0.05
        assert abs(readings["Pa"].value * 1000 - truth["Pa"]) <= 0.05 and readings["Pa"].unit == "bar"
        assert abs(readings["Dm"].value - truth["Dm"]) <= 0.5
        assert all(r.quality is Quality.GOOD for r in readings.values())


async def test_faults_map_to_our_errors() -> None:
    async with WxtSerialSim(clock=lambda: T0) as sim:
        drv = _driver(sim, timeout_s=0.3, quiet_s=0.1)
        await drv.open()
        try:
            sim.fault = Fault.SILENCE
            with pytest.raises(DeviceTimeout):
                await drv.read()
            sim.fault = Fault.GARBAGE
            with pytest.raises(FrameError, match="no valid reply"):
                await drv.read()
            sim.fault = Fault.CORRUPT_FIELDS
            r = {x.point: x for x in await drv.read()}
            assert r["Dn"].quality is Quality.COMM_FAILURE and r["Dn"].value is None
            assert r["Dm"].quality is Quality.COMM_FAILURE  # lost with the damage, not invented
            assert r["Ta"].quality is Quality.GOOD and r["Pa"].quality is Quality.GOOD
            sim.fault = Fault.NONE
            assert all(x.quality is Quality.GOOD for x in await drv.read(["Ta", "Ua"]))
        finally:
            await drv.close()


async def test_bad_checksum_and_wrong_baud_are_frame_errors() -> None:
    async with WxtSerialSim(clock=lambda: T0, protocol="nmea") as sim:
        sim.fault = Fault.BAD_CHECKSUM
        drv = _driver(sim, timeout_s=0.3, quiet_s=0.1)
        await drv.open()
        try:
            with pytest.raises(FrameError, match="checksum mismatch"):
                await drv.read()
        finally:
            await drv.close()
        sim.fault = Fault.NONE
        wrong = _driver(sim, baudrate=9600, timeout_s=0.3, quiet_s=0.1)
        await wrong.open()
        try:
            with pytest.raises(FrameError):
                await wrong.read()
        finally:
            await wrong.close()


async def test_commands_other_address_and_link_errors() -> None:
    async with WxtSerialSim(clock=lambda: T0) as sim:
        drv = _driver(sim)
        await drv.open()
        try:
            await drv.write("set_polled_mode", {})
            assert sim.polled_mode and sim.requests[-1] == "0XU,M=P"
            await drv.write("reset_rain", {})
            assert sim.requests[-1] == "0XZRU"
            with pytest.raises(CommandRefused):
                await drv.write("format_disk", {})
        finally:
            await drv.close()
        other = _driver(sim, address="1", timeout_s=0.2, quiet_s=0.1)
        await other.open()
        try:
            with pytest.raises(DeviceTimeout):  # address 1 is absent: silence, as on RS-485
                await other.read()
        finally:
            await other.close()
    with pytest.raises(LinkError):
        await WxtSerialDriver(WxtSerialSettings(name="x", port="/dev/does-not-exist")).open()


@pytest.mark.parametrize("kw", [
    {"baudrate": 12345}, {"parity": "X"}, {"address": "00"}, {"mode": "modbus"},
    {"timeout_s": 0.1, "quiet_s": 0.2}, {"points": ("Tx",)}, {"port": ""},
])
def test_settings_are_validated(kw: dict) -> None:
    base = {"name": "wxt1", "port": "/dev/ttyUSB0"} | kw
    with pytest.raises(ValueError):
        WxtSerialSettings(**base)


def test_driver_satisfies_the_protocol() -> None:
    assert isinstance(WxtSerialDriver(WxtSerialSettings(name="wxt1", port="/dev/ttyUSB0")), Driver)
