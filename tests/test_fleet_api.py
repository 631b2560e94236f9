"""Fleet server HTTP API: enrollment, box queries, health, lifespan, settings, public API."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from test_fleet_helpers import ADMIN, Clock, TestClient, admin, bearer, enroll, new_token, post, rows, snapshot

from core.errors import ConfigError
from fleet_server.app import create_app
from fleet_server.errors import StoreError
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

# -- enrollment -------------------------------------------------------------------------------


def test_enroll_happy_path_registers_box_and_credential_works(client: TestClient, store: SqliteStore) -> None:
    credential = enroll(client, "pole-17.east", "serial-A1", tags=["north", "pilot"])
    box = store.get_box("pole-17.east")
    assert box is not None
    assert (box.hardware, box.site, box.agent_version) == ("serial-A1", "5th-ave", "0.1.0")
    assert box.tags == ("north", "pilot")
    ack = post(client, credential, "pole-17.east", rows(1, 3)).json()
    assert ack == {"accepted": 3, "duplicates": 0, "max_seq": 3}


def test_token_creation_needs_the_admin_token(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": ADMIN}):
        r = client.post("/api/v1/enrollment-tokens", json={}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"] == "not_authenticated"
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("body, field", [
    ({"ttl_s": 0}, "ttl_s"),
    ({"ttl_s": -5}, "ttl_s"),
    ({"ttl_s": "3600"}, "ttl_s"),
    ({"max_uses": 0}, "max_uses"),
    ({"max_uses": 1.5}, "max_uses"),
    ({"surprise": 1}, "surprise"),
])
def test_token_creation_refuses_bad_bodies(client: TestClient, body: dict[str, Any], field: str) -> None:
    r = client.post("/api/v1/enrollment-tokens", json=body, headers=admin())
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"])


def test_unknown_token_is_refused_with_403(client: TestClient, store: SqliteStore) -> None:
    before = snapshot(store)
    r = client.post("/api/v1/enroll", json={"token": "not-a-token", "box_id": "b1", "hardware": "h"})
    assert (r.status_code, r.json()["error"]) == (403, "unknown_token")
    assert snapshot(store) == before


def test_expired_token_is_refused(client: TestClient, store: SqliteStore, clock: Clock) -> None:
    token = new_token(client, ttl_s=60)
    clock.now += 61
    r = client.post("/api/v1/enroll", json={"token": token, "box_id": "b1", "hardware": "h"})
    assert (r.status_code, r.json()["error"]) == (403, "expired_token")
    assert store.list_boxes() == []


def test_used_up_token_is_refused(client: TestClient, store: SqliteStore) -> None:
    token = new_token(client, max_uses=2)
    for box in ("b1", "b2"):
        assert client.post("/api/v1/enroll", json={"token": token, "box_id": box, "hardware": box}).status_code == 200
    r = client.post("/api/v1/enroll", json={"token": token, "box_id": "b3", "hardware": "b3"})
    assert (r.status_code, r.json()["error"]) == (403, "token_used_up")
    assert [b.box_id for b in store.list_boxes()] == ["b1", "b2"]


def test_existing_box_id_without_its_credential_becomes_pending(client: TestClient, store: SqliteStore) -> None:
    # Issue 9 finding 5: this used to answer 409 box_id_taken (telling an outsider the id exists)
    # or, with the same hardware string, hand over a new credential. Now the box stays as it was.
    enroll(client, "b1", "serial-1")
    before = snapshot(store)
    token = new_token(client, max_uses=1)
    r = client.post("/api/v1/enroll", json={"token": token, "box_id": "b1", "hardware": "serial-EVIL"})
    assert r.status_code == 202 and r.json()["status"] == "pending" and "credential" not in r.json()
    assert snapshot(store) == before


def test_reenrolling_with_the_current_credential_rotates_it_and_keeps_readings(client: TestClient) -> None:
    old = enroll(client, "b1", "serial-1")
    assert post(client, old, "b1", rows(1, 5)).status_code == 200
    r = client.post("/api/v1/enroll", json={"box_id": "b1", "hardware": "serial-1", "site": "moved",
                                            "credential": old})
    assert r.status_code == 200
    new = r.json()["credential"]
    assert post(client, old, "b1", rows(6, 1)).status_code == 401
    assert post(client, new, "b1", rows(6, 1)).json() == {"accepted": 1, "duplicates": 0, "max_seq": 6}
    page = client.get("/api/v1/boxes/b1/readings", headers=admin()).json()
    assert [row[0] for row in page["readings"]] == [1, 2, 3, 4, 5, 6]
    assert client.get("/api/v1/boxes/b1", headers=admin()).json()["site"] == "5th-ave"  # site kept on re-key


@pytest.mark.parametrize("change, field", [
    ({"box_id": "bad/id"}, "box_id"),
    ({"box_id": ""}, "box_id"),
    ({"box_id": "x" * 65}, "box_id"),
    ({"box_id": "pole 1"}, "box_id"),
    ({"hardware": ""}, "hardware"),
    ({"tags": "north"}, "tags"),
    ({"tags": [1]}, "tags"),
    ({"token": 3}, "token"),  # (a missing token is allowed: re-key with the credential)
])
def test_enroll_refuses_malformed_bodies(
    client: TestClient, store: SqliteStore, change: dict[str, Any], field: str
) -> None:
    body = {"token": new_token(client), "box_id": "b1", "hardware": "h", **change}
    r = client.post("/api/v1/enroll", json=body)
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"])
    assert store.list_boxes() == []


def test_enroll_refuses_missing_fields(client: TestClient, store: SqliteStore) -> None:
    r = client.post("/api/v1/enroll", json={"token": new_token(client)})
    assert r.status_code == 422
    missing = {tuple(e["loc"]) for e in r.json()["detail"]}
    assert {("body", "box_id"), ("body", "hardware")} <= missing
    assert store.list_boxes() == []


# -- queries ----------------------------------------------------------------------------------


def test_readings_pagination_walks_every_row_once(client: TestClient) -> None:
    credential = enroll(client)
    post(client, credential, "box-1", rows(1, 25))
    seen: list[int] = []
    after = 0
    pages = 0
    while True:
        page = client.get(f"/api/v1/boxes/box-1/readings?after_seq={after}&limit=10", headers=admin()).json()
        assert page["box_id"] == "box-1"
        if not page["readings"]:
            assert page["next_after_seq"] == after
            break
        pages += 1
        seen += [row[0] for row in page["readings"]]
        assert page["next_after_seq"] == page["readings"][-1][0]
        after = page["next_after_seq"]
    assert (seen, pages) == (list(range(1, 26)), 3)


def test_readings_filter_by_device_and_point(client: TestClient) -> None:
    credential = enroll(client)
    batch = rows(1, 3, "rs1", "air_temp") + rows(4, 3, "rs1", "rh") + rows(7, 3, "gate", "rh")
    post(client, credential, "box-1", batch)

    def seqs(query: str) -> list[int]:
        r = client.get(f"/api/v1/boxes/box-1/readings?{query}", headers=admin())
        assert r.status_code == 200, r.text
        return [row[0] for row in r.json()["readings"]]

    assert seqs("device=rs1") == [1, 2, 3, 4, 5, 6]
    assert seqs("point=rh") == [4, 5, 6, 7, 8, 9]
    assert seqs("device=gate&point=rh&after_seq=7") == [8, 9]
    assert seqs("device=&point=") == list(range(1, 10))


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=51", "limit"), ("after_seq=-1", "after_seq"), ("limit=ten", "limit"),
])
def test_readings_query_refuses_bad_parameters(client: TestClient, query: str, field: str) -> None:
    enroll(client)
    r = client.get(f"/api/v1/boxes/box-1/readings?{query}", headers=admin())
    assert r.status_code == 422
    assert field in r.text


def test_box_endpoints(client: TestClient, clock: Clock) -> None:
    credential = enroll(client, "b1", "hw-1")
    enroll(client, "a0", "hw-0")
    clock.now += 30
    post(client, credential, "b1", rows(1, 4))
    assert [b["box_id"] for b in client.get("/api/v1/boxes", headers=admin()).json()["boxes"]] == ["a0", "b1"]
    box = client.get("/api/v1/boxes/b1", headers=admin()).json()
    assert (box["max_seq"], box["last_seen"], box["online"], box["tags"]) == (4, clock.now, False, ["north"])
    assert "credential" not in json.dumps(box)
    assert client.get("/api/v1/boxes/nope", headers=admin()).status_code == 404
    assert client.get("/api/v1/boxes/nope/readings", headers=admin()).json()["error"] == "unknown_box"
    for path in ("/api/v1/boxes", "/api/v1/boxes/b1", "/api/v1/boxes/b1/readings"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=bearer(credential)).status_code == 401  # a box is not an admin


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    running = {"state": "running", "restarts": 0, "last_error": None, "last_error_at": None}
    body = r.json()
    assert body.pop("replica_id") == client.app.state.fleet.settings.replica  # type: ignore[attr-defined]
    assert sorted(body.pop("leases")) == ["alert-rules", "command-dispatch", "rollout-timeouts"]  # test_fleet_leases
    assert body == {"status": "ok", "store": "ok", "mqtt": "disabled", "boxes": 0,
                    "tasks": {"rollout-writer": running, "credential-cache": running,
                              "command-dispatch": running, "box-health-writer": running, "rollout-sweeper": running,
                              "alert-rules": running}}


def test_healthz_fails_when_the_store_is_gone(client: TestClient, store: SqliteStore) -> None:
    store.close()
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "failing"
    r = client.post("/api/v1/enrollment-tokens", json={}, headers=admin())
    assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "store_unavailable", "5")


def test_app_owns_and_closes_its_default_store(tmp_path: Path) -> None:
    app = create_app(ServerSettings(db_path=tmp_path / "own.db", admin_token=ADMIN))
    with TestClient(app) as c:
        enroll(c)
    assert (tmp_path / "own.db").exists()
    with TestClient(create_app(ServerSettings(db_path=tmp_path / "own.db", admin_token=ADMIN))) as c:
        assert [b["box_id"] for b in c.get("/api/v1/boxes", headers=admin()).json()["boxes"]] == ["box-1"]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lifespan_runs_the_bridge_and_stops_it(tmp_path: Path) -> None:
    settings = ServerSettings(db_path=tmp_path / "l.db", admin_token=ADMIN, mqtt_host="127.0.0.1",
                              mqtt_port=_dead_port(), mqtt_backoff_base_s=0.01, mqtt_backoff_cap_s=0.05)
    app = create_app(settings)
    state = app.state.fleet
    with TestClient(app) as c:
        task = state.bridge_task
        assert task is not None and not task.done()
        r = c.get("/healthz")  # broker unreachable: not a reason for a restart, the bridge retries
        assert (r.status_code, r.json()["mqtt"]) == (200, "connecting")
    assert task.done() and task.cancelled() and state.bridge_task is None
    with pytest.raises(StoreError):
        state.store.list_boxes()  # the app closed the store it created


def test_a_crashed_bridge_is_logged_restarted_and_turns_healthz_503_until_it_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        connected = asyncio.Event()
        runs = 0

        async def run(self) -> None:
            self.runs += 1
            if self.runs <= 2:
                raise RuntimeError("bug in the bridge")
            await asyncio.Event().wait()  # the third run stays up

    app = create_app(ServerSettings(db_path=tmp_path / "c.db", admin_token=ADMIN))
    app.state.fleet.bridge = bridge = Broken()
    supervisor = app.state.supervisor
    supervisor.base_s, supervisor.cap_s, supervisor.settle_s = 0.05, 0.1, 0.3
    with TestClient(app) as c:
        r = c.get("/healthz")
        for _ in range(200):
            if r.status_code == 503:
                break
            time.sleep(0.01)
            r = c.get("/healthz")
        body = r.json()
        assert (r.status_code, body["status"], body["mqtt"], body["failing"]) == (503, "failing", "restarting",
                                                                                  ["mqtt-bridge"])
        assert body["tasks"]["mqtt-bridge"]["last_error"] == "RuntimeError: bug in the bridge"
        assert body["tasks"]["rollout-sweeper"]["state"] == "running"
        for _ in range(300):
            r = c.get("/healthz")
            if r.status_code == 200:
                break
            time.sleep(0.01)
        body = r.json()
        assert (r.status_code, body["mqtt"], body["tasks"]["mqtt-bridge"]["state"]) == (200, "connecting", "running")
        assert bridge.runs == 3 and body["tasks"]["mqtt-bridge"]["restarts"] == 2
        assert 'quanedge_fleet_task_restarts_total{task="mqtt-bridge"} 2.0' in c.get("/metrics").text
    assert any("server task mqtt-bridge died" in rec.getMessage() and rec.exc_info for rec in caplog.records)


# -- settings ---------------------------------------------------------------------------------


def test_mqtt_session_id_is_explicit_or_derived_from_the_prefix_and_replica(tmp_path: Path) -> None:
    base: dict[str, Any] = {"db_path": tmp_path / "x.db", "admin_token": ADMIN, "replica_id": "r1"}
    assert ServerSettings(**base).mqtt_session_id == "quanedge-fleet-quanedge@r1"
    assert ServerSettings(**base, topic_prefix="city/north").mqtt_session_id == "quanedge-fleet-city.north@r1"
    base.pop("replica_id")
    assert ServerSettings(**base, mqtt_client_id="fleet-a").mqtt_session_id == "fleet-a"


@pytest.mark.parametrize("change, key", [
    ({"admin_token": "s3cr3t-value"}, "admin_token"),
    ({"port": 70000}, "port"),
    ({"max_batch": 0}, "max_batch"),
    ({"topic_prefix": "city/#"}, "topic_prefix"),
    ({"topic_prefix": "/quanedge"}, "topic_prefix"),
    ({"mqtt_client_id": "has space"}, "mqtt_client_id"),
    ({"mqtt_password": "pw"}, "mqtt_username"),
    ({"mqtt_cert_file": "c.pem"}, "mqtt_key_file"),
    ({"mqtt_ca_file": "ca.pem"}, "mqtt_tls"),
    ({"mqtt_backoff_base_s": 0.0}, "mqtt_backoff_base_s"),
])
def test_settings_refuse_bad_values_naming_the_key(tmp_path: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerSettings(**{"db_path": tmp_path / "x.db", "admin_token": ADMIN, **change})
    assert info.value.key == key
    if key == "admin_token":
        assert "s3cr3t" not in str(info.value)  # never echo a secret


def test_public_api_is_pinned() -> None:
    import importlib

    expected = {
        "fleet_server.app": ["create_app", "status_for"],
        "fleet_server.errors": ["AdmissionRequired", "BadParameter", "BatchTooLarge", "BrokerRefused",
                                "BrokerUnavailable", "ClientGone", "EnrollmentRefused", "FleetError", "Forbidden",
                                "NotAuthenticated", "PayloadError", "StoreError", "UnknownAdmission", "UnknownBox",
                                "WebhookUnavailable"],
        "fleet_server.ingest": ["IngestService", "TelemetryBatch", "parse_telemetry"],
        "fleet_server.metrics": ["FleetMetrics"],
        "fleet_server.mqtt_bridge": ["MqttBridge", "parse_status"],
        "fleet_server.server": ["serve"],
        "fleet_server.settings": ["ServerSettings", "default_replica_id"],
        "fleet_server.store": ["Box", "IngestResult", "Store"],
        "fleet_server.store.base": ["BOX_ID_PATTERN", "Box", "IngestResult", "ReadingsUpkeep", "Store", "check_box_id",
                                    "hash_secret", "new_secret"],
        "fleet_server.store.leases": ["LEASE_NAME_PATTERN", "Lease", "LeaseStore", "check_lease_args"],
        "fleet_server.leases": ["MIN_TTL_S", "TTL_PERIODS", "LeasedJob", "Leases", "Step", "default_ttl"],
        "fleet_server.store.sqlite": ["SqliteStore"],
        "fleet_server.seq_tracking": ["BUFFER_REPLACED", "DROPPED_MAX", "MAX_RANGES", "REASON_PATTERN", "SEQ_MAX",
                                      "UNANNOUNCED", "UNTRACKED", "Gap", "Range", "SeqReport", "SeqState", "Tracked",
                                      "check_reason", "seq_ranges", "track"],
        "fleet_server.alerts": ["ALERT_STATES", "KIND_PATTERN", "SEQ_GAP", "Alert", "AlertKey", "AlertQuery",
                                "AlertState", "OutboxEntry", "UnknownAlert"],
        "fleet_server.store.alerts": ["AlertStore"],
        "fleet_server.store.seq": ["SeqStatus", "SeqStore"],
        "fleet_server.readings_out": ["EXPORT_FIELDS", "BoxReading", "ReadingKey", "ReadingsQuery", "check_key",
                                      "decode_cursor", "encode_cursor"],
    }
    for name, names in expected.items():
        module = importlib.import_module(name)
        assert sorted(module.__all__) == sorted(names), name
        assert all(hasattr(module, attr) for attr in names), name
