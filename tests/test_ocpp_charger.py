"""ocpp_charger: settings parsing, the value codec (property tests) and the persisted transaction ids.

The websocket sessions between the simulator and the driver are in tests/test_ocpp_charger_wire.py.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from core.config_reader import Table
from core.errors import ConfigError, StorageError
from core.reading import Quality
from drivers.kind import ParseContext
from drivers.ocpp_charger import KIND, codec
from drivers.ocpp_charger.transactions import TransactionStore

BASE = {"name": "carpark-a", "kind": "ocpp_charger", "listen": "127.0.0.1:0", "id_tags": ["04a2b3c4"],
        "chargers": [{"id": "CP001", "secret": "cp001-secret"}]}


def parse(tmp: Path, **over: Any) -> Any:
    """As the config loader does: it reads `kind`, the kind's parser the rest, then unknown keys are refused."""
    t = Table({**BASE, **over}, str(tmp / "box.toml"), "device[0]")
    t.str("kind")
    s = KIND.parse(t, ParseContext(tmp))
    t.reject_unknown()
    return s


def test_parse_defaults_and_paths(tmp_path: Path) -> None:
    s = parse(tmp_path, allow_commands=["remote_start"], points=["CP001.online", "CP001.c2.status", "refused_total"])
    assert (s.name, s.listen_host, s.listen_port, s.path, s.heartbeat_s) == ("carpark-a", "127.0.0.1", 0, "/ocpp", 300)
    assert s.state_file == tmp_path / "ocpp-carpark-a.json"
    assert s.id_tags == frozenset({"04A2B3C4"})  # CiString: compared case-insensitively
    assert s.chargers[0].credential.user == "CP001" and s.chargers[0].connectors == 2
    assert "cp001-secret" not in repr(s)


def test_kind_import_does_not_load_ocpp_or_websockets() -> None:
    import subprocess

    code = ("import sys, drivers.ocpp_charger; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ocpp', 'websockets')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[]"


def test_id_tags_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "tags.txt").write_text("# site A\n04A2B3C4  # fleet card\n\nabcdef01\n", encoding="utf-8")
    assert parse(tmp_path, id_tags="tags.txt").id_tags == frozenset({"04A2B3C4", "ABCDEF01"})


@pytest.mark.parametrize("over,key", [
    ({"chargers": []}, "device[0].chargers"),
    ({"chargers": ["CP001"]}, "device[0].chargers"),
    ({"chargers": [{"id": "CP001"}]}, "device[0].chargers[0].secret"),
    ({"chargers": [{"id": "CP001", "secret": "short"}]}, "device[0].chargers[0].secret"),
    ({"chargers": [{"id": "CP.001", "secret": "cp001-secret"}]}, "device[0].chargers[0].id"),
    ({"chargers": [{"id": "CP001", "secret": "cp001-secret"}, {"id": "CP001", "sources": ["10.0.0.5"]}]},
     "device[0].chargers[1].id"),
    ({"chargers": [{"id": "CP001", "sources": ["10.0.0.300"]}]}, "device[0].chargers[0].sources"),
    ({"chargers": [{"id": "CP001", "secret": "cp001-secret", "connectors": 0}]}, "device[0].chargers[0].connectors"),
    ({"chargers": [{"id": "CP001", "secret": "cp001-secret", "secrte": "x"}]}, "device[0].chargers[0].secrte"),
    ({"listen": "nope"}, "device[0].listen"),
    ({"path": "ocpp"}, "device[0].path"),
    ({"heartbeat_s": 1}, "device[0].heartbeat_s"),
    ({"id_tags": ["X" * 21]}, "device[0].id_tags"),
    ({"id_tags": []}, "device[0].id_tags"),
    ({"id_tags": "missing.txt"}, "device[0].id_tags"),
    ({"allow_commands": ["open_door"]}, "device[0].allow_commands"),
    ({"points": ["CP001.c3.status"]}, "device[0].points"),
    ({"points": ["CP009.online"]}, "device[0].points"),
    ({"store_timeout_s": 0}, "device[0].store_timeout_s"),
    ({"name": "bad name"}, "device[0].name"),
    ({"typo": 1}, "device[0].typo"),
])
def test_parse_errors_name_the_key(tmp_path: Path, over: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(tmp_path, **over)
    assert e.value.key == key
    assert str(tmp_path / "box.toml") in str(e.value) and key in str(e.value)


def test_accept_any_id_tag_needs_no_list(tmp_path: Path) -> None:
    s = parse(tmp_path, id_tags=[], accept_any_id_tag=True)
    assert s.accept_any_id_tag and not s.id_tags


# --- codec -------------------------------------------------------------------------------------------
def test_decode_sample_units_phases_and_defaults() -> None:
    s = codec.decode_sample({"value": "12.5", "unit": "kWh"})
    assert (s.point, s.value, s.unit, s.quality) == ("energy_import", 12500.0, "Wh", Quality.GOOD)
    s = codec.decode_sample({"value": "231.0", "measurand": "Voltage", "phase": "L1-N"})
    assert (s.point, s.unit) == ("voltage_l1_n", "V")
    s = codec.decode_sample({"value": "41", "measurand": "Temperature", "unit": "Celcius", "location": "Body"})
    assert (s.point, s.unit) == ("temperature_body", "degC")
    assert codec.decode_sample({"value": "130", "measurand": "SoC", "unit": "Percent"}).quality == Quality.OUT_OF_RANGE
    assert codec.decode_sample({"value": "-5", "unit": "Wh"}).quality == Quality.OUT_OF_RANGE
    assert codec.decode_sample({"value": "AB12", "format": "SignedData"}) is None


@pytest.mark.parametrize("sv,code,words", [
    ({"value": "abc"}, "TypeConstraintViolation", "value"),
    ({"value": "NaN"}, "TypeConstraintViolation", "value"),
    ({"value": "1e400"}, "PropertyConstraintViolation", "out of range"),
    ({"value": 5}, "TypeConstraintViolation", "string"),
    ({"value": "230", "measurand": "Voltage", "unit": "Wh"}, "PropertyConstraintViolation", "does not fit Voltage"),
    ({"value": "1", "measurand": "Energy.Magic"}, "PropertyConstraintViolation", "measurand"),
    ({"value": "1", "phase": "L4"}, "PropertyConstraintViolation", "phase"),
])
def test_decode_sample_refuses_junk(sv: dict, code: str, words: str) -> None:
    with pytest.raises(codec.SampleError) as e:
        codec.decode_sample(sv, "meterValue[0].sampledValue[0]")
    assert e.value.code == code and words in str(e.value) and "sampledValue[0]" in str(e.value)


def test_timestamps() -> None:
    assert codec.parse_timestamp("2026-12-03T16:00:00Z") == codec.parse_timestamp("2026-12-03T17:00:00+01:00")
    assert codec.parse_timestamp("2026-12-03T16:00:00.123456789Z") == pytest.approx(1796313600.123457, abs=1e-6)
    assert codec.parse_timestamp("2026-12-03T16:00:00") == codec.parse_timestamp("2026-12-03T16:00:00Z")
    for junk in ("yesterday", "2026-13-03T16:00:00Z", "2026-12-03", 1796313600, "2026-12-03T16:00:00Z" + "0" * 30):
        with pytest.raises(codec.SampleError):
            codec.parse_timestamp(junk)
    now = 1_796_313_600.0
    assert codec.charger_time(0.0, now) == (now, Quality.SUSPECT)  # a charger without a clock yet
    assert codec.charger_time(now - 60, now) == (now - 60, Quality.GOOD)
    assert codec.charger_time(now + 10 * 86400, now) == (now, Quality.SUSPECT)
    assert codec.parse_timestamp(codec.format_time(now + 0.25)) == now + 0.25


@given(st.floats(min_value=-1e15, max_value=1e15, allow_nan=False))
def test_parse_number_round_trips_floats(x: float) -> None:
    assert codec.parse_number(repr(x)) == x


@given(st.text(max_size=40))
def test_parse_number_only_finite_numbers_or_sample_error(text: str) -> None:
    try:
        v = codec.parse_number(text)
    except codec.SampleError as e:
        assert e.code in ("TypeConstraintViolation", "PropertyConstraintViolation")
    else:
        assert math.isfinite(v) and abs(v) <= codec.NUMBER_MAX


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 1, 1)),
       st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_parse_timestamp_matches_datetime(dt: datetime, offset_min: int) -> None:
    aware = dt.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    assert codec.parse_timestamp(aware.isoformat()) == pytest.approx(aware.timestamp(), abs=1e-6)


_VALUES = st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.none(), st.lists(st.integers(), max_size=2))
_KEYS = st.sampled_from(["value", "unit", "measurand", "phase", "location", "context", "format"])
_GOOD = st.fixed_dictionaries({"value": st.sampled_from(["1", "0.5", "-3", "x"]),
                               "unit": st.sampled_from(["Wh", "kWh", "V", "A", "Percent", "kW"]),
                               "measurand": st.sampled_from(["Voltage", "SoC", "Power.Active.Import",
                                                             "Energy.Active.Import.Register", "Current.Import"])})


@hsettings(max_examples=300)
@given(st.one_of(st.dictionaries(_KEYS, _VALUES, max_size=7), _GOOD, _VALUES))
def test_decode_sample_never_crashes(sv: Any) -> None:
    try:
        s = codec.decode_sample(sv)
    except codec.SampleError as e:
        assert e.code in ("TypeConstraintViolation", "PropertyConstraintViolation")
    else:
        assert s is None or (math.isfinite(s.value) and s.unit in
                             ("Wh", "varh", "W", "var", "VA", "", "A", "V", "Hz", "degC", "degF", "K", "%", "rpm"))


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False), st.sampled_from([("kWh", 1000.0), ("Wh", 1.0)]))
def test_energy_is_stored_in_wh(x: float, unit: tuple[str, float]) -> None:
    s = codec.decode_sample({"value": repr(x), "unit": unit[0]})
    assert s.unit == "Wh" and s.value == pytest.approx(x * unit[1])


# --- transaction ids ---------------------------------------------------------------------------------
async def test_transaction_ids_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tx.json"
    a = TransactionStore(path, clock=lambda: 1_700_000_000.0)
    await a.load()
    assert a.next_id == 100_000_000  # the clock floor, not 1: a lost file does not reuse ids
    t1 = await a.start("CP001", 1, "TAG", 100, "2026-12-03T16:00:00Z")
    again = await a.start("CP001", 1, "TAG", 100, "2026-12-03T16:00:00Z")  # a re-send of the same start
    t2 = await a.start("CP001", 2, "TAG", 5, "2026-12-03T16:00:01Z")
    assert again is t1 and t2.tx == t1.tx + 1
    await a.stop(t1.tx, 900)
    b = TransactionStore(path, clock=lambda: 1_700_000_000.0)
    await b.load()
    assert b.next_id == t2.tx + 1 and set(b.open) == {t2.tx} and b.was_closed(t1.tx)
    assert b.open[t2.tx].meter_start == 5
    assert json.loads(path.read_text())["next_id"] == t2.tx + 1


async def test_unreadable_state_is_an_error_not_a_restart_from_one(tmp_path: Path) -> None:
    path = tmp_path / "tx.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(StorageError, match="not JSON"):
        await TransactionStore(path).load()
