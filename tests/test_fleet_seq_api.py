"""Seq gaps through the real HTTP telemetry endpoint, the alerts API and its roles, the box's seq
view, and the boundary's refusals of malformed low / base / dropped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_fleet_helpers import ADMIN, Clock, TestClient, admin, bearer, enroll, snapshot

from core.reading import Reading
from fleet_server.access import AuditQuery, Role
from fleet_server.app import create_app
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

BASE = 1_764_000_000_000_000   # a buffer file's first seq: its creation time in microseconds


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore, clock: Clock) -> Iterator[TestClient]:
    settings = ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, max_batch=300)
    with TestClient(create_app(settings, store, clock=clock)) as c:
        yield c


def rows(first: int, count: int) -> list[list[Any]]:
    return [Reading("rs1", "air_temp", 20.0, "degC", 1_764_000_000.0 + i, seq=first + i).to_row() for i in range(count)]


def send(client: TestClient, credential: str, readings: list[Any], **fields: Any) -> Any:
    r = client.post("/api/v1/telemetry", json={"box_id": "box-1", "readings": readings, **fields},
                    headers=bearer(credential))
    assert r.status_code == 200, r.text
    return r.json()


def metric(client: TestClient, name: str, **labels: str) -> float:
    return float(client.app.state.fleet.metrics.value(name, **labels))  # type: ignore[attr-defined]


def test_clean_batches_leave_no_gap_and_a_lost_batch_raises_one_alert(client: TestClient) -> None:
    credential = enroll(client)
    # Batches of 100; everything below each one acknowledged; 200 seqs dropped by the disk cap
    # (announced again in the next message, as the agent does until it is acknowledged).
    send(client, credential, rows(BASE, 100), low=BASE, base=BASE)
    send(client, credential, rows(BASE + 100, 100), low=BASE + 100, base=BASE)
    send(client, credential, rows(BASE + 400, 100), low=BASE + 200, base=BASE,
         dropped=[[BASE + 200, BASE + 399, "disk_cap"]])
    send(client, credential, rows(BASE + 500, 100), low=BASE + 500, base=BASE,
         dropped=[[BASE + 200, BASE + 399, "disk_cap"]])
    assert client.get("/api/v1/alerts", headers=admin()).json() == {"alerts": [], "next_after_id": 0}
    assert metric(client, "quanedge_fleet_readings_dropped_by_box_total", reason="disk_cap") == 200
    seq = client.get("/api/v1/boxes/box-1/seq", headers=admin()).json()
    assert (seq["tracking"], seq["contig"], seq["above"], seq["gaps"]) == (True, BASE + 599, [], 0)
    assert (seq["dropped_readings"], seq["dropped_by_reason"]) == (200, {"disk_cap": 200})
    # The batch BASE+600.. never arrives; the box's low passes it anyway.
    send(client, credential, rows(BASE + 700, 100), low=BASE + 700, base=BASE)
    [alert] = client.get("/api/v1/alerts?kind=seq_gap&open=true", headers=admin()).json()["alerts"]
    assert (alert["box_id"], alert["kind"], alert["open"]) == ("box-1", "seq_gap", True)
    assert alert["detail"] == {"first": BASE + 600, "last": BASE + 699, "missing": 100, "reason": "unannounced"}
    assert metric(client, "quanedge_fleet_seq_gaps_total", reason="unannounced") == 1
    assert metric(client, "quanedge_fleet_seq_gap_readings_total", reason="unannounced") == 100
    assert 'quanedge_fleet_seq_gap_readings_total{reason="unannounced"} 100.0' in client.get("/metrics").text
    seq = client.get("/api/v1/boxes/box-1/seq", headers=admin()).json()
    assert (seq["contig"], seq["gaps"], seq["gap_readings"], seq["gaps_by_reason"]) == (
        BASE + 799, 1, 100, {"unannounced": 100})
    # The HTTP answer is unchanged for the agent.
    assert send(client, credential, rows(BASE + 800, 1), low=BASE + 800, base=BASE) == {
        "accepted": 1, "duplicates": 0, "max_seq": BASE + 800}


def test_out_of_order_and_repeated_batches_raise_nothing(client: TestClient) -> None:
    credential = enroll(client)
    send(client, credential, rows(BASE + 100, 100), low=BASE, base=BASE)   # sent before the first was acked
    send(client, credential, rows(BASE, 100), low=BASE, base=BASE)
    send(client, credential, rows(BASE, 100), low=BASE + 200, base=BASE)   # a re-delivery
    send(client, credential, rows(BASE + 200, 5))                          # an older agent: coverage only
    assert client.get("/api/v1/alerts", headers=admin()).json()["alerts"] == []
    assert client.get("/api/v1/boxes/box-1/seq", headers=admin()).json()["contig"] == BASE + 204


def test_viewer_lists_operator_acks_and_the_ack_is_audited(client: TestClient, store: SqliteStore) -> None:
    credential = enroll(client)
    send(client, credential, rows(BASE, 10), low=BASE, base=BASE)
    send(client, credential, rows(BASE + 20, 10), low=BASE + 20, base=BASE)
    send(client, credential, rows(BASE + 40, 10), low=BASE + 40, base=BASE)
    viewer = bearer(store.create_user("vera", Role.VIEWER, "", "test")[1])
    operator = bearer(store.create_user("otto", Role.OPERATOR, "", "test")[1])
    alerts = client.get("/api/v1/alerts", headers=viewer).json()["alerts"]
    assert [(a["detail"]["first"], a["detail"]["last"]) for a in alerts] == [(BASE + 10, BASE + 19),
                                                                          (BASE + 30, BASE + 39)]
    first, second = (a["id"] for a in alerts)
    r = client.post(f"/api/v1/alerts/{first}/ack", headers=viewer)
    assert r.status_code == 403 and "needs the operator role" in r.json()["detail"]
    r = client.post(f"/api/v1/alerts/{first}/ack", headers=operator)
    assert r.status_code == 200
    assert (r.json()["acked_by"], r.json()["acked_at"], r.json()["open"]) == ("otto", 1_700_000_000.0, False)
    assert client.post(f"/api/v1/alerts/{first}/ack", headers=admin()).json()["acked_by"] == "otto"
    assert [a["id"] for a in client.get("/api/v1/alerts?open=true", headers=viewer).json()["alerts"]] == [second]
    assert [a["id"] for a in client.get("/api/v1/alerts?open=false", headers=viewer).json()["alerts"]] == [first]
    page = client.get(f"/api/v1/alerts?limit=1&after_id={first}", headers=viewer).json()
    assert ([a["id"] for a in page["alerts"]], page["next_after_id"]) == ([second], second)
    assert client.get("/api/v1/alerts?box_id=other", headers=viewer).json()["alerts"] == []
    r = client.post(f"/api/v1/alerts/{second + 1}/ack", headers=operator)
    assert (r.status_code, r.json()["error"]) == (404, "unknown_alert")
    assert client.get("/api/v1/alerts?kind=Bad-Kind", headers=viewer).status_code == 422
    audited = [(e.principal, e.action, e.status) for e in store.audit_entries(AuditQuery(action="ack_alert"))]
    assert audited == [("otto", "ack_alert", 404), ("bootstrap-admin", "ack_alert", 200), ("otto", "ack_alert", 200),
                       ("vera", "ack_alert", 403)]


def test_seq_of_an_unknown_box_is_404(client: TestClient) -> None:
    assert client.get("/api/v1/boxes/ghost/seq", headers=admin()).status_code == 404


@pytest.mark.parametrize("fields, field", [
    ({"low": 0}, "low"),
    ({"low": 2**63}, "low"),
    ({"low": True}, "low"),
    ({"low": 5.0}, "low"),
    ({"low": "5"}, "low"),
    ({"low": None}, "low"),
    ({"base": -1}, "base"),
    ({"base": False}, "base"),
    ({"low": 5, "base": 6}, "low"),
    ({"dropped": {"first": 1}}, "dropped"),
    ({"dropped": [[1, 2]]}, "dropped"),
    ({"dropped": [[2, 1, "ttl"]]}, "dropped"),
    ({"dropped": [[0, 1, "ttl"]]}, "dropped"),
    ({"dropped": [[1, 2**63, "ttl"]]}, "dropped"),
    ({"dropped": [[1, True, "ttl"]]}, "dropped"),
    ({"dropped": [[1, 2, ""]]}, "dropped"),
    ({"dropped": [[1, 2, "a" * 33]]}, "dropped"),
    ({"dropped": [[1, 2, "Disk"]]}, "dropped"),
    ({"dropped": [[1, 2, "x\u0000"]]}, "dropped"),
    ({"dropped": [[1, 2, 3]]}, "dropped"),
    ({"dropped": [[i, i, "ttl"] for i in range(1, 258)]}, "dropped"),
])
def test_malformed_seq_fields_are_refused_naming_the_field(client: TestClient, store: SqliteStore,
                                                           fields: dict[str, Any], field: str) -> None:
    credential = enroll(client)
    before = snapshot(store)
    r = client.post("/api/v1/telemetry", json={"box_id": "box-1", "readings": rows(1, 2), **fields},
                    headers=bearer(credential))
    assert r.status_code == 422, r.text
    assert (r.json()["error"], r.json()["field"]) == ("bad_body", field)
    assert snapshot(store) == before and store.seq_status("box-1").contig is None


def test_the_largest_valid_seq_fields_are_accepted(client: TestClient) -> None:
    credential = enroll(client)
    top = 2**63 - 1
    send(client, credential, rows(1, 2), low=top, base=1, dropped=[[i, i, "ttl"] for i in range(3, 259)])
    [alert] = client.get("/api/v1/alerts", headers=admin()).json()["alerts"]
    assert alert["detail"] == {"first": 259, "last": top - 1, "missing": top - 259, "reason": "unannounced"}
