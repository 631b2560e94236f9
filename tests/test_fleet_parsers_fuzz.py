"""Hypothesis over the fleet server's payload parsers: whatever arrives, the only exceptions are
the FleetError tree's (a refusal naming its reason), never a crash, and what is accepted is
storable (finite numbers in range, clean text)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_fleet_helpers import Clock, TestClient, bearer, enroll, open_client, open_store

from core.validate import TS_MAX, TS_MIN, is_clean_text
from fleet_server.errors import FleetError
from fleet_server.ingest import IngestService, parse_telemetry
from fleet_server.metrics import FleetMetrics
from fleet_server.mqtt_bridge import MqttBridge, parse_status
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

# JSON-ish values with the hostile cases weighted in: huge ints, lone surrogates, NaN, nesting.
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**420),
    st.integers(min_value=-(10**420), max_value=-(10**18)), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),
    st.sampled_from(["routine", "alarm", "event", "box-1", "rs1", "degC", "", "\x00", "\ud800"]),
)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=6), max_leaves=40)
_rowish = st.lists(_scalars, min_size=9, max_size=9)
_VALID_ROW = [1, 1_700_000_000.5, "rs1", "air_temp", 21.5, "degC", 0, "routine", None]


def _one_field_changed(index_and_value: tuple[int, Any]) -> list[Any]:
    index, value = index_and_value
    row = list(_VALID_ROW)
    row[index] = value
    return row


_near_valid = st.tuples(st.integers(min_value=0, max_value=8), st.one_of(
    _scalars, st.floats(min_value=-1e300, max_value=1e300), st.integers(min_value=1, max_value=2**63 - 1),
    st.text(min_size=1, max_size=300), st.floats(min_value=0, max_value=4_102_444_800.0),
)).map(_one_field_changed)
_row_like = st.one_of(
    _near_valid, st.just(list(_VALID_ROW)),
    _rowish,
    st.tuples(st.integers(min_value=-5, max_value=2**64), st.one_of(st.floats(), st.integers()), st.text(max_size=70),
              st.text(max_size=70), _scalars, st.text(max_size=20), st.integers(min_value=-1, max_value=2**64),
              st.sampled_from(["routine", "alarm", "event", "x"]), st.one_of(st.none(), st.text(max_size=5))).map(list),
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def _telemetry_payloads() -> st.SearchStrategy[bytes]:
    body = st.fixed_dictionaries({"box_id": st.one_of(st.just("box-1"), _scalars),
                                  "readings": st.one_of(st.lists(_row_like, max_size=5), _json)})
    near = st.fixed_dictionaries({"box_id": st.just("box-1"),
                                  "readings": st.lists(_near_valid, min_size=1, max_size=2)})
    return st.one_of(near.map(_dumps), near.map(_dumps), body.map(_dumps), _json.map(_dumps), st.binary(max_size=200),
                     st.integers(min_value=0, max_value=5000).map(lambda n: b"[" * n))


@settings(max_examples=600, deadline=None)
@given(_telemetry_payloads())
def test_parse_telemetry_refuses_only_with_fleet_errors(payload: bytes) -> None:
    try:
        batch = parse_telemetry(payload, max_batch=100)
    except FleetError:
        return
    for reading in batch.readings:
        assert TS_MIN <= reading.ts <= TS_MAX
        for text in (reading.device, reading.point, reading.unit, reading.text or ""):
            assert is_clean_text(text)
        assert reading.value is None or isinstance(reading.value, (int, float, str))


def _status_payloads() -> st.SearchStrategy[bytes]:
    body = st.fixed_dictionaries({"state": st.one_of(st.sampled_from(["online", "offline"]), _scalars),
                                  "ts": _scalars})
    return st.one_of(body.map(_dumps), _json.map(_dumps), st.binary(max_size=100))


@settings(max_examples=400, deadline=None)
@given(_status_payloads())
def test_parse_status_refuses_only_with_fleet_errors(payload: bytes) -> None:
    try:
        online, ts = parse_status(payload)
    except FleetError:
        return
    assert isinstance(online, bool) and TS_MIN <= ts <= TS_MAX


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MqttBridge, SqliteStore]]:
    path = tmp_path_factory.mktemp("bridge") / "f.db"
    settings_ = ServerSettings(db_path=path, admin_token="a" * 32, mqtt_host="127.0.0.1", topic_prefix="q")
    store = SqliteStore(path)
    store.enroll(store.create_enrollment_token(60, 1, ""), "box-1", "hw-1", "", "", [])
    service = IngestService(store, FleetMetrics(store), max_batch=100, max_body_bytes=10**6)
    yield MqttBridge(settings_, service), store
    store.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(topic=st.one_of(st.sampled_from(["q/box-1/telemetry", "q/box-1/status", "q/box-2/telemetry"]),
                       st.text(max_size=40).map(lambda t: "q/" + t)),
       payload=st.one_of(_telemetry_payloads(), _status_payloads()))
def test_the_bridge_handles_any_message_without_raising(rig: tuple[MqttBridge, SqliteStore], topic: str,
                                                        payload: bytes) -> None:
    """The bridge's per-message step: stored, or refused and quarantined; it never raises (only a
    StoreError may, and this store does not fail)."""
    bridge, store = rig
    before = store.count_quarantined()
    bridge._process(topic, payload)
    assert store.count_quarantined() in (before, before + 1)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    tmp = tmp_path_factory.mktemp("http")
    for store in open_store(tmp, Clock()):
        for client in open_client(tmp, store):
            yield client, enroll(client, "box-1")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_telemetry_payloads())
def test_post_telemetry_answers_any_body_without_a_5xx(http: tuple[TestClient, str], payload: bytes) -> None:
    """The whole HTTP path (cap, auth, parse, store): stored (200) or refused with a 4xx."""
    client, credential = http
    r = client.post("/api/v1/telemetry", content=payload, headers=bearer(credential))
    event(f"HTTP {r.status_code}")
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.text
    if r.status_code != 200:
        assert set(r.json()) >= {"error", "detail"}
