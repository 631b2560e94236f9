"""Device profiles: the shipped WXT530 map against devices.md, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from drivers.modbus.codec import plan_reads
from drivers.modbus.profile import PROFILE_DIR, LineDefaults, load_profile

# Transcribed by hand from /work/shared/reference/devices.md ("Vaisala WXT530 ... function 04"):
# address -> (point, type, scale, unit)
S16, U16 = "s16", "u16"
DEVICES_MD_WXT530 = {
    # 0x0000 "high byte model (01-06), low byte software version": two bit fields, checked below
    0x000A: ("relative_humidity", S16, 0.1, "%"), 0x000B: ("relative_humidity_min", S16, 0.1, "%"),
    0x000C: ("relative_humidity_max", S16, 0.1, "%"), 0x000D: ("relative_humidity_avg", S16, 0.1, "%"),
    0x000E: ("air_pressure", S16, 0.1, "hPa"), 0x000F: ("air_pressure_min", S16, 0.1, "hPa"),
    0x0010: ("air_pressure_max", S16, 0.1, "hPa"), 0x0011: ("air_pressure_avg", S16, 0.1, "hPa"),
    0x0012: ("wind_direction", S16, 0.1, "deg"), 0x0013: ("wind_direction_min", S16, 0.1, "deg"),
    0x0014: ("wind_direction_max", S16, 0.1, "deg"), 0x0015: ("wind_direction_avg", S16, 0.1, "deg"),
    0x0016: ("wind_direction_raw", S16, 0.1, "deg"),
    0x0019: ("precipitation_type", S16, 1.0, ""),
    0x001A: ("wind_quality", U16, 1.0, "%"),
    0x001B: ("global_radiation", S16, 0.1, "W/m2"), 0x001C: ("global_radiation_min", S16, 0.1, "W/m2"),
    0x001D: ("global_radiation_max", S16, 0.1, "W/m2"), 0x001E: ("global_radiation_avg", S16, 0.1, "W/m2"),
    0x001F: ("air_temperature", S16, 0.1, "degC"), 0x0020: ("air_temperature_min", S16, 0.1, "degC"),
    0x0021: ("air_temperature_max", S16, 0.1, "degC"), 0x0022: ("air_temperature_avg", S16, 0.1, "degC"),
    0x0023: ("dew_point", S16, 0.1, "degC"),
}


def test_wxt530_profile_matches_devices_md() -> None:
    prof = load_profile("vaisala_wxt530")
    assert ((prof.name, prof.manufacturer, prof.model, prof.protocol)
            == ("vaisala_wxt530", "Vaisala", "WXT530", "modbus"))
    assert prof.line == LineDefaults(baudrate=19200, parity="N", stopbits=1, bytesize=8)
    assert prof.default_unit == 1
    got = {p.address: (p.name, p.type, p.scale, p.unit) for p in prof.points if p.address}
    assert got == DEVICES_MD_WXT530
    ident = [(p.name, p.type, p.bits, p.min, p.max) for p in prof.points if p.address == 0]
    assert ident == [("model_number", U16, (8, 15), 1.0, 6.0), ("software_version", U16, (0, 7), None, None)]
    for p in prof.points:
        assert p.function == 4, p.name
        assert p.word_order == "ABCD" and p.offset == 0.0, p.name
        assert p.invalid == ((32767,) if p.type == S16 else (65535,)), p.name
    assert (prof.point("air_temperature").min, prof.point("air_temperature").max) == (-50.0, 60.0)  # raw -500..600
    assert (prof.point("precipitation_type").min, prof.point("precipitation_type").max) == (0.0, 90.0)


def test_wxt530_reads_fit_the_manuals_example_query() -> None:
    # devices.md example read: 01 04 00 0A 00 1C -> function 04 from 0x000A, 28 registers
    prof = load_profile("vaisala_wxt530")
    blocks = plan_reads(prof.points, prof.max_registers_per_read, prof.max_read_gap)
    assert [(b.function, b.address, b.count) for b in blocks] == [(4, 0x0000, 1), (4, 0x000A, 26)]
    assert blocks[1].address + blocks[1].count <= 0x000A + 0x1C


def test_profile_by_path_and_hex_or_int_registers(tmp_path: Path) -> None:
    path = tmp_path / "dev.toml"
    path.write_text(_doc('address = 31\ninvalid = ["0x7FFF"]\n[points.b]\nfunction = 3\naddress = "0x001F"\n'))
    prof = load_profile(str(path))
    assert [(p.name, p.function, p.address, p.invalid) for p in prof.points] == [
        ("t", 4, 31, (0x7FFF,)), ("b", 3, 31, ()),
    ]
    assert prof.line == LineDefaults(9600, "N", 1, 8)


def _doc(point_body: str = "address = 1\n", *, top: str = "", line: str = "") -> str:
    return (
        f'name = "dev"\nmanufacturer = "Acme"\nmodel = "X1"\n{top}'
        f'[line]\nbaudrate = 9600\nparity = "N"\nstopbits = 1\nbytesize = 8\n{line}'
        f'[points.t]\nfunction = 4\ntype = "s16"\n{point_body}'
    )


BAD_PROFILES = [
    # (document, dotted key, bad value shown, words of the expectation)
    (_doc('address = 1\ntype = "u8"\n').replace('type = "s16"\n', ""), "points.t.type", "'u8'",
     "u16, s16, u32, s32, f32"),
    (_doc('address = "0x1G"\n'), "points.t.address", "'0x1G'", "hex string"),
    (_doc("address = 70000\n"), "points.t.address", "70000", "0..65535"),
    (_doc('address = 1\nword_order = "ABDC"\n'), "points.t.word_order", "'ABDC'", "ABCD, CDAB, BADC, DCBA"),
    (_doc("address = 1\nscale = 0\n"), "points.t.scale", "0.0", "non-zero"),
    (_doc("address = 1\n").replace("function = 4", "function = 5"), "points.t.function", "5", "3 (holding"),
    (_doc("address = 1\ninvalid = [65535]\n"), "points.t.invalid", "(65535,)", "-32768..32767"),
    (_doc("address = 1\ninvalid = 32767\n"), "points.t.invalid", "32767", "list of raw values"),
    (_doc("address = 1\nmin = 10.0\nmax = 5.0\n"), "points.t.max", "5.0", ">= min"),
    (_doc("address = 1\nscael = 0.1\n"), "points.t.scael", "'scael'", "one of"),
    (_doc("address = 1\nunit = 5\n"), "points.t.unit", "5", "a string"),
    (_doc(""), "points.t.address", None, "a value for every point"),
    (_doc("address = 1\nbits = [8, 15]\n"), "points.t.bits", "(8, 15)", "on a u16 or u32 point"),
    (_doc('address = 1\ntype = "u16"\nbits = [9, 16]\n').replace('type = "s16"\n', ""), "points.t.bits", "(9, 16)",
     "bit numbers 0..15 with first <= last"),
    (_doc('address = 1\ntype = "u16"\nbits = [7, 0]\n').replace('type = "s16"\n', ""), "points.t.bits", "(7, 0)",
     "first <= last"),
    (_doc('address = 1\ntype = "u16"\nbits = 8\n').replace('type = "s16"\n', ""), "points.t.bits", "8",
     "[first, last]"),
    (_doc(line='parity = "X"\n').replace('parity = "N"\n', ""), "line.parity", "'X'", '"N", "E" or "O"'),
    (_doc().replace("baudrate = 9600", "baudrate = 12345"), "line.baudrate", "12345", "19200"),
    (_doc(top="default_unit = 0\n"), "default_unit", "0", "an integer from 1 to 255"),
    (_doc(top="max_registers_per_read = 200\n"), "max_registers_per_read", "200", "an integer from 1 to 125"),
    (_doc(top='protocol = "bacnet"\n'), "protocol", "'bacnet'", '"modbus"'),
    (_doc(top="colour = 1\n"), "colour", "'colour'", "one of"),
    (_doc().replace('manufacturer = "Acme"\n', ""), "manufacturer", None, "non-empty string"),
    ('name = "dev"\nmanufacturer = "Acme"\nmodel = "X1"\n', "points", None, "[points.<name>]"),
    (_doc().replace("[points.t]", "[points.Bad-Name]"), "points.Bad-Name", "'Bad-Name'", "lower_snake_case"),
]


@pytest.mark.parametrize("doc, key, shown, expected", BAD_PROFILES, ids=[c[1] for c in BAD_PROFILES])
def test_bad_profile_errors_name_file_key_value_and_expectation(
    tmp_path: Path, doc: str, key: str, shown: str | None, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    text = str(err.value)
    assert str(path) in text and err.value.file == str(path)
    assert err.value.key == key and f"[{key}]" in text
    if shown is not None:
        assert f"(got {shown})" in text
    assert expected in text


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "dev\n')
    with pytest.raises(ConfigError, match=r"broken\.toml: profile is not valid TOML"):
        load_profile(str(path))


def test_missing_profile_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_profile("no_such_device")
    assert str(PROFILE_DIR / "no_such_device.toml") in str(err.value)
    assert "vaisala_wxt530" in str(err.value)
    with pytest.raises(ConfigError, match="cannot read profile"):
        load_profile(str(tmp_path / "absent.toml"))
