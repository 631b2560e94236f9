"""Telemetry over HTTP: dedup, ordering, all-or-nothing validation, limits, metrics, speed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_support import BOTH_BACKENDS
from test_fleet_helpers import ADMIN, MAX_BATCH, TestClient, admin, bearer, enroll, post, rows, snapshot

from core.reading import Quality, Reading, RecordClass
from fleet_server.app import create_app
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore


@BOTH_BACKENDS
def test_same_batch_twice_is_stored_once(client: TestClient, store: SqliteStore) -> None:
    credential = enroll(client)
    batch = rows(1, 50)
    assert post(client, credential, "box-1", batch).json() == {"accepted": 50, "duplicates": 0, "max_seq": 50}
    assert post(client, credential, "box-1", batch).json() == {"accepted": 0, "duplicates": 50, "max_seq": 50}
    assert [r.to_row() for r in store.readings("box-1", limit=1000)] == batch


@BOTH_BACKENDS
def test_out_of_order_batches_are_all_stored_in_seq_order(client: TestClient, store: SqliteStore) -> None:
    credential = enroll(client)
    assert post(client, credential, "box-1", rows(11, 10)).json()["max_seq"] == 20
    # An older batch arriving late (a retry) is stored; max_seq never goes back.
    assert post(client, credential, "box-1", rows(1, 10)).json() == {"accepted": 10, "duplicates": 0, "max_seq": 20}
    # Overlapping batch: only the new half counts.
    assert post(client, credential, "box-1", rows(15, 10)).json() == {"accepted": 4, "duplicates": 6, "max_seq": 24}
    assert [r.seq for r in store.readings("box-1", limit=100)] == list(range(1, 25))


@BOTH_BACKENDS
def test_reading_fields_survive_the_round_trip(client: TestClient) -> None:
    credential = enroll(client)
    alarm = Reading("gate-2", "state", None, "", 1_700_000_123.5, Quality.MISSING | Quality.DERIVED,
                    RecordClass.ALARM, "barrier stuck", seq=7)
    assert post(client, credential, "box-1", [alarm.to_row()]).status_code == 200
    page = client.get("/api/v1/boxes/box-1/readings", headers=admin()).json()
    assert page["readings"] == [alarm.to_row()]


def _good() -> list[Any]:
    return rows(1, 1)[0]


def _with(index: int, value: Any) -> list[Any]:
    row = _good()
    row[index] = value
    return row


BAD_ROWS = [
    pytest.param(_with(4, "21.5"), "value", id="value-string"),
    pytest.param(_with(0, -3), "seq", id="seq-negative"),
    pytest.param(_with(0, 0), "seq", id="seq-zero"),
    pytest.param(_with(0, 1.5), "seq", id="seq-float"),
    pytest.param(_with(0, 2**64), "seq", id="seq-too-large"),
    pytest.param(_with(1, "yesterday"), "ts", id="ts-string"),
    pytest.param(_with(2, ""), "device", id="device-empty"),
    pytest.param(_with(3, None), "point", id="point-null"),
    pytest.param(_with(5, 5), "unit", id="unit-number"),
    pytest.param(_with(6, -1), "quality", id="quality-negative"),
    pytest.param(_with(6, 2**70), "quality", id="quality-too-large"),
    pytest.param(_with(7, "weird"), "cls", id="cls-unknown"),
    pytest.param(_with(8, 3), "text", id="text-number"),
    pytest.param(_good()[:8], "row", id="missing-field"),
    pytest.param({"seq": 1}, "row", id="row-is-object"),
]


@pytest.mark.parametrize("bad_row, field", BAD_ROWS)
@BOTH_BACKENDS
def test_one_bad_row_refuses_the_whole_batch(client: TestClient, store: SqliteStore, bad_row: Any, field: str) -> None:
    credential = enroll(client)
    before = snapshot(store)
    batch: list[Any] = rows(1, 3) + [bad_row] + rows(10, 3)
    r = post(client, credential, "box-1", batch)
    assert r.status_code == 422, r.text
    body = r.json()
    assert (body["error"], body["row"], body["field"]) == ("bad_row", 3, field)
    assert "readings[3]" in body["detail"]
    assert snapshot(store) == before


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
@BOTH_BACKENDS
def test_non_finite_values_are_refused(client: TestClient, store: SqliteStore, text: str) -> None:
    credential = enroll(client)
    before = snapshot(store)
    body = f'{{"box_id": "box-1", "readings": [[1, 1700000000.0, "rs1", "t", {text}, "C", 0, "routine", null]]}}'
    r = client.post("/api/v1/telemetry", content=body, headers=bearer(credential))
    assert (r.status_code, r.json()["field"]) == (422, "value")
    assert snapshot(store) == before


@pytest.mark.parametrize("content, status, error", [
    (b"this is not json", 400, "bad_json"),
    (b"\xff\xfe\xfa garbage", 400, "bad_json"),
    (b"[" * 100_00, 400, "bad_json"),
    (b"", 400, "bad_json"),
    (b"[]", 422, "bad_body"),
    (b'{"readings": []}', 422, "bad_body"),
    (b'{"box_id": "box-1"}', 422, "bad_body"),
    (b'{"box_id": "box-1", "readings": {"0": []}}', 422, "bad_body"),
    (b'{"box_id": 7, "readings": []}', 422, "bad_body"),
])
@BOTH_BACKENDS
def test_malformed_bodies_are_refused_with_a_reason(
    client: TestClient, store: SqliteStore, content: bytes, status: int, error: str
) -> None:
    credential = enroll(client)
    before = snapshot(store)
    r = client.post("/api/v1/telemetry", content=content, headers=bearer(credential))
    assert (r.status_code, r.json()["error"]) == (status, error), r.text
    assert r.json()["detail"]
    assert snapshot(store) == before


@BOTH_BACKENDS
def test_missing_or_unknown_credential_is_401(client: TestClient, store: SqliteStore) -> None:
    enroll(client)
    before = snapshot(store)
    for headers in ({}, bearer("forged-credential"), {"Authorization": "Basic abc"}, bearer(ADMIN)):
        r = client.post("/api/v1/telemetry", json={"box_id": "box-1", "readings": rows(1, 2)}, headers=headers)
        assert (r.status_code, r.json()["error"]) == (401, "not_authenticated"), headers
    assert snapshot(store) == before


@BOTH_BACKENDS
def test_credential_of_another_box_is_403(client: TestClient, store: SqliteStore) -> None:
    enroll(client, "box-1", "hw-1")
    other = enroll(client, "box-2", "hw-2")
    before = snapshot(store)
    r = post(client, other, "box-1", rows(1, 2))
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    assert "box-1" in r.json()["detail"] and "box-2" in r.json()["detail"]
    assert snapshot(store) == before


@BOTH_BACKENDS
def test_too_many_rows_is_413(client: TestClient, store: SqliteStore) -> None:
    credential = enroll(client)
    before = snapshot(store)
    r = post(client, credential, "box-1", rows(1, MAX_BATCH + 1))
    assert (r.status_code, r.json()["error"]) == (413, "batch_too_large")
    assert str(MAX_BATCH) in r.json()["detail"]
    assert snapshot(store) == before
    assert post(client, credential, "box-1", rows(1, MAX_BATCH)).status_code == 200


@BOTH_BACKENDS
def test_too_many_bytes_is_413_even_without_content_length(client: TestClient, store: SqliteStore) -> None:
    credential = enroll(client)
    before = snapshot(store)
    big = json.dumps({"box_id": "box-1", "readings": rows(1, 1), "pad": "x" * 70_000}).encode()
    r = client.post("/api/v1/telemetry", content=big, headers=bearer(credential))
    assert (r.status_code, r.json()["error"]) == (413, "batch_too_large")

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to trust
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    r = client.post("/api/v1/telemetry", content=chunks(), headers=bearer(credential))
    assert (r.status_code, r.json()["error"]) == (413, "batch_too_large")
    assert snapshot(store) == before


@BOTH_BACKENDS
def test_metrics_count_ingested_duplicates_rejected_and_boxes(client: TestClient) -> None:
    credential = enroll(client)
    enroll(client, "box-2", "hw-2")
    post(client, credential, "box-1", rows(1, 10))
    post(client, credential, "box-1", rows(5, 10))
    post(client, credential, "box-1", [_with(0, -1)])
    post(client, "forged", "box-1", rows(1, 1))
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'quanedge_fleet_readings_ingested_total{transport="http"} 14.0' in text
    assert 'quanedge_fleet_readings_duplicate_total{transport="http"} 6.0' in text
    assert 'quanedge_fleet_batches_rejected_total{reason="bad_row",transport="http"} 1.0' in text
    assert 'quanedge_fleet_batches_rejected_total{reason="not_authenticated",transport="http"} 1.0' in text
    assert "quanedge_fleet_boxes_enrolled 2.0" in text
    assert 'quanedge_fleet_enrollments_total{outcome="enrolled"} 2.0' in text


def test_two_apps_keep_separate_metrics(tmp_path: Path) -> None:
    apps = [create_app(ServerSettings(db_path=tmp_path / f"{i}.db", admin_token=ADMIN)) for i in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        credential = enroll(a)
        post(a, credential, "box-1", rows(1, 3))
        assert 'quanedge_fleet_readings_ingested_total{transport="http"} 3.0' in a.get("/metrics").text
        assert 'readings_ingested_total{transport="http"}' not in b.get("/metrics").text


def test_thousand_row_batches_with_default_limits_are_stored_in_full(tmp_path: Path) -> None:
    """Seven 1,000-row batches through the whole ASGI stack with the server's default limits: every
    row is accepted and stored once. (How fast: `python -m bench.fleet --only telemetry`.)"""
    db = tmp_path / "perf.db"
    app = create_app(ServerSettings(db_path=db, admin_token=ADMIN))  # default limits
    with TestClient(app) as client:
        credential = enroll(client, "fast", "hw-fast")
        for i in range(7):
            body = json.dumps({"box_id": "fast", "readings": rows(1 + i * 1000, 1000)}).encode()
            r = client.post("/api/v1/telemetry", content=body, headers=bearer(credential))
            assert r.status_code == 200 and r.json()["accepted"] == 1000, r.text
        again = client.post("/api/v1/telemetry", content=body, headers=bearer(credential))
        assert again.status_code == 200 and again.json()["accepted"] == 0, again.text
    store = SqliteStore(db)
    try:
        stored = store.readings("fast", limit=10_000)
    finally:
        store.close()
    assert [r.seq for r in stored] == list(range(1, 7001))
