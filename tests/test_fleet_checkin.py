"""The box's update contract: check-in (auth, ETag/304, answers from memory), inventory, status
reports (validation, idempotency, 409 after the server closed an action)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_support import BOTH_BACKENDS
from rollout_support import AGENT, action_of, checkin, create, make_repo, open_app, provision, report, status
from test_fleet_helpers import Clock, TestClient, bearer, enroll

from fleet_server.store.sqlite import SqliteStore


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("tuf")).path


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore, clock: Clock, repo_dir: Path) -> Iterator[TestClient]:
    yield from open_app(tmp_path, store, clock, repo_dir, checkin_interval_s=17,
                        public_url="https://fleet.example:8443")


# -- check-in ---------------------------------------------------------------------------------


@BOTH_BACKENDS
def test_idle_checkin_has_server_interval_etag_and_304(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 2)
    r = checkin(client, boxes, "b00000")
    assert r.status_code == 200 and r.json() == {"poll_interval_s": 17, "action": None}
    etag = r.headers["etag"]
    assert etag.startswith('"') and r.headers["cache-control"] == "no-cache"
    again = checkin(client, boxes, "b00000", etag)
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    assert checkin(client, boxes, "b00000", 'W/"x", ' + etag).status_code == 304
    assert checkin(client, boxes, "b00000", '"stale"').status_code == 200


@BOTH_BACKENDS
def test_action_answer_is_stable_until_the_action_closes(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 1)
    rid = create(client, waves=["100%"], timeout_s=900)["rollout_id"]
    r = checkin(client, boxes, "b00000")
    action = r.json()["action"]
    assert action == {"action_id": f"{rid}.b00000", "rollout_id": rid, "kind": "agent", "target_name": AGENT,
                      "version": "0.2.0", "repo_url": "https://fleet.example:8443/tuf", "deadline_s": 900}
    report(client, boxes, "b00000", action["action_id"], "downloading")
    assert checkin(client, boxes, "b00000", r.headers["etag"]).status_code == 304
    report(client, boxes, "b00000", action["action_id"], "success")
    done = checkin(client, boxes, "b00000", r.headers["etag"])
    assert done.status_code == 200 and done.json()["action"] is None


@BOTH_BACKENDS
def test_unchanged_checkins_are_answered_from_memory(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 30)
    create(client, waves=["1", "100%"])
    engine = client.app.state.rollouts   # type: ignore[attr-defined]
    ids = sorted(boxes)
    action_of(client, boxes, ids[0])               # the canary: the store decides
    before = engine.store_checkins
    for _ in range(3):
        for box in ids:                            # wave 1 is full and not yet successful
            checkin(client, boxes, box)
    assert engine.store_checkins == before


@pytest.mark.parametrize("headers, code, error", [
    ({}, 401, "not_authenticated"),
    ({"Authorization": "Bearer not-a-credential"}, 401, "not_authenticated"),
    ({"Authorization": "Basic abc"}, 401, "not_authenticated"),
])
@BOTH_BACKENDS
def test_checkin_needs_the_box_credential(client: TestClient, store: SqliteStore, headers: dict[str, str],
                                          code: int, error: str) -> None:
    provision(store, 1)
    r = client.get("/api/v1/boxes/b00000/checkin", headers=headers)
    assert (r.status_code, r.json()["error"]) == (code, error)
    assert r.headers["www-authenticate"] == "Bearer"


@BOTH_BACKENDS
def test_another_boxs_id_is_forbidden_and_bad_ids_refused(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 2)
    r = client.get("/api/v1/boxes/b00001/checkin", headers=bearer(boxes["b00000"]))
    assert (r.status_code, r.json()["error"]) == (403, "forbidden")
    r = client.get("/api/v1/boxes/bad%20id/checkin", headers=bearer(boxes["b00000"]))
    assert (r.status_code, r.json()["field"]) == (422, "box_id")


@BOTH_BACKENDS
def test_rotated_credential_stops_working_at_once(client: TestClient, store: SqliteStore) -> None:
    old = enroll(client, "pole-1", "serial-1")
    assert client.get("/api/v1/boxes/pole-1/checkin", headers=bearer(old)).status_code == 200   # now cached
    new = enroll(client, "pole-1", "serial-1", credential=old)  # re-key (issue 9: needs the current one)
    assert client.get("/api/v1/boxes/pole-1/checkin", headers=bearer(old)).status_code == 401
    assert client.get("/api/v1/boxes/pole-1/checkin", headers=bearer(new)).status_code == 200


# -- inventory --------------------------------------------------------------------------------


@BOTH_BACKENDS
def test_inventory_is_saved_and_drives_targeting(client: TestClient, store: SqliteStore) -> None:
    cred = enroll(client, "pole-1", "serial-1")
    boxes = {"pole-1": cred}
    body = {"agent_version": "0.1.0", "hardware": "qe-box-a", "models": {"loop-anomaly": "1.2.0"}, "firmware": {}}
    r = client.put("/api/v1/boxes/pole-1/inventory", json=body, headers=bearer(cred))
    assert r.status_code == 200 and r.json() == {"box_id": "pole-1", "saved": True}
    assert create(client, filter={"current_versions": ["0.1.0"]})["total"] == 1
    assert action_of(client, boxes, "pole-1") is not None
    body["agent_version"] = "0.1.9"
    client.put("/api/v1/boxes/pole-1/inventory", json=body, headers=bearer(cred))
    assert store.get_box("pole-1").agent_version == "0.1.9"   # type: ignore[union-attr]


@pytest.mark.parametrize("body, code, field", [
    (b"{not json", 400, None),
    (json.dumps([1]).encode(), 422, None),
    (json.dumps({"hardware": "qe-box-a"}).encode(), 422, "agent_version"),
    (json.dumps({"agent_version": "", "hardware": "qe-box-a"}).encode(), 422, "agent_version"),
    (json.dumps({"agent_version": "1", "hardware": "a", "models": ["x"]}).encode(), 422, "models"),
    (json.dumps({"agent_version": "1", "hardware": "a", "models": {"m": 3}}).encode(), 422, "models.m"),
    (json.dumps({"agent_version": "1", "hardware": "a", "extra": 1}).encode(), 422, "extra"),
    (b"{" + b" " * 70_000 + b"}", 413, None),
])
@BOTH_BACKENDS
def test_bad_inventory_is_refused_and_changes_nothing(client: TestClient, store: SqliteStore, body: bytes,
                                                      code: int, field: str | None) -> None:
    boxes = provision(store, 1, agent_version="0.1.0")
    r = client.put("/api/v1/boxes/b00000/inventory", content=body, headers=bearer(boxes["b00000"]))
    assert r.status_code == code, r.text
    assert r.json().get("field") == field
    assert store.get_box("b00000").agent_version == "0.1.0"   # type: ignore[union-attr]


# -- status reports ---------------------------------------------------------------------------


def _assigned(client: TestClient, store: SqliteStore) -> tuple[dict[str, str], dict[str, Any], str]:
    boxes = provision(store, 2)
    rid = create(client, waves=["100%"])["rollout_id"]
    action = action_of(client, boxes, "b00000")
    assert action is not None
    return boxes, action, rid


@BOTH_BACKENDS
def test_reports_walk_the_states_and_are_idempotent(client: TestClient, store: SqliteStore) -> None:
    boxes, action, rid = _assigned(client, store)
    aid = action["action_id"]
    for state in ("proceeding", "downloading", "downloading", "downloaded", "installing", "restarting"):
        assert report(client, boxes, "b00000", aid, state)["state"] == state
    assert report(client, boxes, "b00000", aid, "restarting", detail={"boot": 2})["recorded"] is False
    assert report(client, boxes, "b00000", aid, "success")["recorded"] is True
    again = report(client, boxes, "b00000", aid, "success")            # the box repeats after a crash
    assert (again["state"], again["recorded"]) == ("success", False)
    late = report(client, boxes, "b00000", aid, "failure", expect=409)  # a different final state
    assert (late["error"], late["state"]) == ("action_closed", "success")
    assert status(client, rid)["waves"][0]["succeeded"] == 1


@BOTH_BACKENDS
def test_failure_keeps_reason_and_code(client: TestClient, store: SqliteStore) -> None:
    boxes, action, rid = _assigned(client, store)
    report(client, boxes, "b00000", action["action_id"], "rejected", reason="tuf said no", reason_code="rollback")
    listed = client.get(f"/api/v1/rollouts/{rid}/actions?state=rejected",
                        headers={"Authorization": "Bearer admin-token-for-tests-0123456789"}).json()["actions"]
    assert [(a["box_id"], a["reason"], a["reason_code"]) for a in listed] == [("b00000", "tuf said no", "rollback")]


@pytest.mark.parametrize("body, code, field", [
    ({"state": "exploded"}, 422, "state"),
    ({}, 422, "state"),
    ({"state": "failure", "reason": 5}, 422, "reason"),
    ({"state": "failure", "reason_code": "x" * 65}, 422, "reason_code"),
    ({"state": "failure", "detail": [1]}, 422, "detail"),
    ({"state": "success", "extra": True}, 422, "extra"),
])
@BOTH_BACKENDS
def test_bad_reports_are_refused_and_change_nothing(client: TestClient, store: SqliteStore, body: dict[str, Any],
                                                    code: int, field: str) -> None:
    boxes, action, rid = _assigned(client, store)
    r = client.post(f"/api/v1/boxes/b00000/actions/{action['action_id']}/status", json=body,
                    headers=bearer(boxes["b00000"]))
    assert (r.status_code, r.json().get("field")) == (code, field), r.text
    assert store.rollout_state_counts(rid)[1] == {"assigned": 1}


@BOTH_BACKENDS
def test_reports_for_unknown_or_foreign_actions(client: TestClient, store: SqliteStore) -> None:
    boxes, action, rid = _assigned(client, store)
    url = "/api/v1/boxes/{}/actions/{}/status"
    ok = {"state": "downloading"}
    r = client.post(url.format("b00001", action["action_id"]), json=ok, headers=bearer(boxes["b00001"]))
    assert (r.status_code, r.json()["error"]) == (404, "unknown_action")      # b00000's action
    r = client.post(url.format("b00001", f"{rid}.b00001"), json=ok, headers=bearer(boxes["b00001"]))
    assert (r.status_code, r.json()["error"]) == (404, "unknown_action")      # targeted, not assigned
    r = client.post(url.format("b00000", "r-0000.b00000"), json=ok, headers=bearer(boxes["b00000"]))
    assert r.status_code == 404
    r = client.post(url.format("b00000", "not-an-action"), json=ok, headers=bearer(boxes["b00000"]))
    assert (r.status_code, r.json()["field"]) == (422, "action_id")
    r = client.post(url.format("b00000", action["action_id"]), json=ok, headers=bearer(boxes["b00001"]))
    assert r.status_code == 403
    assert store.rollout_state_counts(rid)[1] == {"assigned": 1}


@BOTH_BACKENDS
def test_checkin_and_report_metrics(client: TestClient, store: SqliteStore) -> None:
    boxes, action, _ = _assigned(client, store)
    checkin(client, boxes, "b00001")                                           # assigned by the store
    checkin(client, boxes, "b00000")                                           # its open action, from memory
    report(client, boxes, "b00000", action["action_id"], "downloading")
    report(client, boxes, "b00000", action["action_id"], "downloading")      # a repeat is not counted
    metrics = client.app.state.fleet.metrics   # type: ignore[attr-defined]
    assert metrics.value("quanedge_fleet_action_reports_total", state="downloading") == 1
    assert metrics.value("quanedge_fleet_checkins_total", source="store") >= 1
    assert metrics.value("quanedge_fleet_checkins_total", source="memory") >= 1
    assert b"quanedge_fleet_checkins_total" in client.get("/metrics").content
