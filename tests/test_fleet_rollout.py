"""The rollout engine through the HTTP API: targets, waves, thresholds, rate, windows, timeouts,
pause/resume/cancel, one update per box; plus the planner's and windows' pure rules."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pg_support import BOTH_BACKENDS
from rollout_support import (
    AGENT,
    FIRMWARE,
    MODEL,
    Boxes,
    action_of,
    checkin,
    create,
    make_repo,
    open_app,
    provision,
    report,
    status,
)
from test_fleet_helpers import Clock, TestClient, admin

from fleet_server.store.sqlite import SqliteStore


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("tuf")).path


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore, clock: Clock, repo_dir: Path) -> Iterator[TestClient]:
    yield from open_app(tmp_path, store, clock, repo_dir)


def assigned_count(client: TestClient, rollout_id: str) -> int:
    return sum(w["assigned"] for w in status(client, rollout_id)["waves"])


def run_to(client: TestClient, boxes: Boxes, box: str, final: str = "success") -> dict[str, Any]:
    action = action_of(client, boxes, box)
    assert action is not None, box
    for state in ("proceeding", "downloading", "downloaded", "installing"):
        report(client, boxes, box, action["action_id"], state)
    report(client, boxes, box, action["action_id"], final, reason=None if final == "success" else "x",
           reason_code=None if final == "success" else "install_failed")
    return action


# -- creating ---------------------------------------------------------------------------------


@BOTH_BACKENDS
def test_waves_are_cumulative_shares_and_empty_waves_are_dropped(client: TestClient, store: SqliteStore) -> None:
    provision(store, 200)
    r = create(client, waves=["1", "1%", "10%", "50%", "100%"])
    assert (r["total"], r["status"], r["current_wave"]) == (200, "running", 1)
    assert [w["capacity"] for w in r["waves"]] == [1, 1, 18, 80, 100]
    assert r["version"] == "0.2.0" and r["hardware"] == ["qe-box-a", "qe-box-b"]
    small = create(client, waves=["1", "1%", "100%"], filter={"box_ids": ["b00001", "b00002", "b00003"]})
    assert [w["capacity"] for w in small["waves"]] == [1, 2]   # 1 % of 3 is the 1 box already covered


@BOTH_BACKENDS
def test_target_filter_uses_tags_sites_hardware_versions_and_inventory(client: TestClient, store: SqliteStore) -> None:
    provision(store, 4, "a", tags=("north", "pilot"), site="gate-1")
    provision(store, 3, "b", tags=("north",), site="gate-2")
    provision(store, 2, "c", hardware="qe-box-b", site="gate-1", agent_version="0.1.5")
    provision(store, 2, "d", hardware="other-hw")              # the target does not support it
    provision(store, 2, "e", inventory=False)                  # never reported what it runs
    provision(store, 2, "f", agent_version="0.2.0")            # already there
    assert create(client)["total"] == 9
    assert create(client, filter={"tags": ["north", "pilot"]})["total"] == 4
    assert create(client, filter={"sites": ["gate-1"]})["total"] == 6
    assert create(client, filter={"hardware": ["qe-box-b"]})["total"] == 2
    assert create(client, filter={"current_versions": ["0.1.5"]})["total"] == 2
    assert create(client, filter={"box_ids": ["a00000", "d00000", "f00000"]})["total"] == 1
    model = create(client, kind="model", target_name=MODEL, component="loop-anomaly")
    assert model["total"] == 4 + 3 + 2   # not qe-box-b (not in the model's hardware list); f: agent only


@pytest.mark.parametrize("body, status_code, code", [
    ({"target_name": "nope.tar"}, 422, "unknown_target"),
    ({"target_name": FIRMWARE, "kind": "agent"}, 422, "kind_mismatch"),
    ({"version": "0.3.0"}, 422, "version_mismatch"),
    ({"kind": "model", "target_name": MODEL}, 422, "bad_body"),             # component missing
    ({"waves": ["1", "50%"]}, 422, "bad_wave"),
    ({"waves": ["1", "ten%", "100%"]}, 422, "bad_wave"),
    ({"filter": {"tags": ["nobody-has-this"]}}, 422, "empty_target_set"),
    ({"filter": {"hardware": ["other-hw"]}}, 422, "empty_target_set"),
])
@BOTH_BACKENDS
def test_bad_rollouts_are_refused_with_a_reason_and_store_nothing(
    client: TestClient, store: SqliteStore, body: dict[str, Any], status_code: int, code: str,
) -> None:
    provision(store, 5)
    r = create(client, expect=status_code, **body)
    assert r["error"] == code, r
    assert store.list_rollouts() == []


@BOTH_BACKENDS
def test_schema_errors_and_auth(client: TestClient, store: SqliteStore) -> None:
    provision(store, 2)
    for body in ({"kind": "agent"}, {"target_name": AGENT, "kind": "os"}, {"target_name": AGENT, "kind": "agent",
                 "timeout_s": 1}, {"target_name": AGENT, "kind": "agent", "surprise": 1}):
        assert client.post("/api/v1/rollouts", json=body, headers=admin()).status_code == 422
    assert client.post("/api/v1/rollouts", json={"target_name": AGENT, "kind": "agent"}).status_code == 401
    assert client.get("/api/v1/rollouts/r-00000000").status_code == 401
    assert client.get("/api/v1/rollouts/r-00000000", headers=admin()).status_code == 404
    assert client.post("/api/v1/rollouts/r-00000000/explode", headers=admin()).status_code == 422
    assert store.list_rollouts() == []


@BOTH_BACKENDS
def test_no_repository_means_no_rollouts(tmp_path: Path, store: SqliteStore, clock: Clock) -> None:
    provision(store, 2)
    for c in open_app(tmp_path, store, clock, None):
        assert create(c, expect=503)["error"] == "repository_unavailable"


# -- waves and thresholds ---------------------------------------------------------------------


@BOTH_BACKENDS
def test_next_wave_opens_only_after_the_success_threshold(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 20)
    rid = create(client, waves=["1", "25%", "100%"], success_pct=100)["rollout_id"]
    ids = sorted(boxes)
    canary = run_to(client, boxes, ids[0])
    assert canary["rollout_id"] == rid
    # the canary succeeded: wave 2 (4 more boxes) opens; wave 3 waits for 100 % of wave 2
    wave2 = [b for b in ids[1:] if action_of(client, boxes, b) is not None]
    assert len(wave2) == 4
    for box in wave2[:3]:
        run_to(client, boxes, box)
    assert all(action_of(client, boxes, b) is None for b in ids if b not in wave2 and b != ids[0])
    run_to(client, boxes, wave2[3])
    assert action_of(client, boxes, ids[-1]) is not None
    s = status(client, rid)
    assert s["current_wave"] == 3 and [w["succeeded"] for w in s["waves"]] == [1, 4, 0]
    assert store.get_box(ids[0]).agent_version == "0.2.0"   # type: ignore[union-attr]


@BOTH_BACKENDS
def test_failed_canary_pauses_before_any_other_box_is_assigned(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 50)
    rid = create(client, waves=["1", "10%", "100%"], error_pct=0)["rollout_id"]
    ids = sorted(boxes)
    run_to(client, boxes, ids[0], "failure")
    s = status(client, rid)
    assert s["status"] == "paused" and "error threshold" in s["pause_reason"]
    assert all(action_of(client, boxes, b) is None for b in ids[1:])
    assert assigned_count(client, rid) == 1
    assert s["counts"] == {"1": {"failure": 1}, "unassigned": {"pending": 49}}
    # the admin looked and resumes: the failure is accepted (out of wave 1's count), wave 2 opens
    assert client.post(f"/api/v1/rollouts/{rid}/resume", headers=admin()).json()["status"] == "running"
    assert action_of(client, boxes, ids[1]) is not None
    # a new failure counts again: wave 2 (4 boxes, 0 % errors allowed) pauses at its first failure
    run_to(client, boxes, ids[1], "failure")
    assert status(client, rid)["status"] == "paused"


@BOTH_BACKENDS
def test_error_threshold_counts_within_a_wave_and_stops_assignment(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 200)
    rid = create(client, waves=["20%", "100%"], error_pct=10, min_finished=5)["rollout_id"]
    ids = sorted(boxes)
    wave1 = [b for b in ids[:10] if action_of(client, boxes, b) is not None]   # 10 of the wave's 40
    assert len(wave1) == 10
    run_to(client, boxes, wave1[0], "failure")
    run_to(client, boxes, wave1[1], "rejected")
    for box in wave1[2:4]:
        run_to(client, boxes, box)
    assert status(client, rid)["status"] == "running"   # 2 errors: not > 10 % of 40, and 4 < min_finished
    run_to(client, boxes, wave1[4])                              # 5 finished, 2 errors = 40 % > 10 %
    s = status(client, rid)
    assert s["status"] == "paused" and "wave 1 has 2 failed or rejected of 5 finished" in s["pause_reason"]
    assert all(action_of(client, boxes, b) is None for b in ids[10:])
    assert assigned_count(client, rid) == 10
    # boxes already running keep going while paused; their reports still count
    run_to(client, boxes, wave1[5])
    assert status(client, rid)["waves"][0]["succeeded"] == 4


@BOTH_BACKENDS
def test_rate_limit_spaces_assignments(client: TestClient, store: SqliteStore, clock: Clock) -> None:
    boxes = provision(store, 10)
    create(client, waves=["100%"], rate_per_min=12)   # 1 every 5 s, burst 1
    ids = sorted(boxes)
    assert action_of(client, boxes, ids[0]) is not None
    assert action_of(client, boxes, ids[1]) is None
    clock.now += 5.0
    assert action_of(client, boxes, ids[1]) is not None
    assert action_of(client, boxes, ids[2]) is None


# -- windows ----------------------------------------------------------------------------------


def _at(clock: Clock, text: str, tz: str) -> None:
    clock.now = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@BOTH_BACKENDS
def test_maintenance_windows_in_site_local_time(client: TestClient, store: SqliteStore, clock: Clock) -> None:
    boxes = provision(store, 4, site="junction-9")
    policy = {"timezone": "America/New_York",
              "windows": [{"days": "mon-fri", "start": "22:00", "end": "05:00"}],
              "blackouts": [{"days": "daily", "start": "23:30", "end": "23:45", "kinds": ["agent"]}]}
    r = client.put("/api/v1/sites/junction-9/maintenance", json=policy, headers=admin())
    assert r.status_code == 200, r.text
    create(client, waves=["100%"])
    ids = sorted(boxes)
    _at(clock, "2026-03-09T08:00:00", "America/New_York")      # Monday rush hour: no
    assert action_of(client, boxes, ids[0]) is None
    _at(clock, "2026-03-09T23:35:00", "America/New_York")      # inside the window but blacked out
    assert action_of(client, boxes, ids[0]) is None
    _at(clock, "2026-03-10T04:30:00", "America/New_York")      # Monday's window, past midnight
    assert action_of(client, boxes, ids[0]) is not None
    _at(clock, "2026-03-14T23:00:00", "America/New_York")      # Saturday night: not a listed day
    assert action_of(client, boxes, ids[1]) is None
    create(client, expect=201, waves=["100%"], respect_windows=False, target_name=MODEL, kind="model",
           component="loop-anomaly")
    model = action_of(client, boxes, ids[1])
    assert (model["kind"], model["component"]) == ("model", "loop-anomaly")   # type: ignore[index]


@pytest.mark.parametrize("policy, field", [
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"timezone": "UTC", "windows": [{"days": "mon", "start": "25:00", "end": "02:00"}]}, "start"),
    ({"timezone": "UTC", "windows": [{"days": "funday", "start": "01:00", "end": "02:00"}]}, "days"),
    ({"timezone": "UTC", "blackouts": [{"start": "01:00", "end": "01:00"}]}, "end"),
    ({"timezone": "UTC", "windows": [{"start": "01:00", "end": "02:00", "kinds": ["os"]}]}, "kinds"),
    ({"timezone": "UTC", "extra": 1}, None),
])
@BOTH_BACKENDS
def test_bad_site_policies_are_refused(client: TestClient, store: SqliteStore, policy: dict[str, Any],
                                       field: str | None) -> None:
    r = client.put("/api/v1/sites/s1/maintenance", json=policy, headers=admin())
    assert r.status_code == 422 and r.json().get("field") == field, r.text
    assert store.site_policies() == []


# -- timeouts, cancel, one at a time ----------------------------------------------------------


@BOTH_BACKENDS
def test_timeout_fails_the_box_frees_it_and_a_later_rollout_proceeds(
    client: TestClient, store: SqliteStore, clock: Clock,
) -> None:
    boxes = provision(store, 1)
    box = "b00000"
    first = create(client, waves=["100%"], timeout_s=60, error_pct=100)
    stuck = action_of(client, boxes, box)
    report(client, boxes, box, stuck["action_id"], "downloading")   # type: ignore[index]
    second = create(client, kind="model", target_name=MODEL, component="loop-anomaly", waves=["100%"])
    assert action_of(client, boxes, box)["rollout_id"] == first["rollout_id"]  # type: ignore[index]
    clock.now += 61
    client.portal.call(client.app.state.rollouts.sweep)   # type: ignore[attr-defined]
    s = status(client, first["rollout_id"])
    assert s["counts"]["1"] == {"failure": 1} and s["waves"][0]["failed"] == 1 and s["status"] == "finished"
    late = report(client, boxes, box, stuck["action_id"], "success", expect=409)   # type: ignore[index]
    assert (late["error"], late["state"], late["reason_code"]) == ("action_closed", "failure", "timeout")
    assert action_of(client, boxes, box)["rollout_id"] == second["rollout_id"]  # type: ignore[index]


@BOTH_BACKENDS
def test_timeout_is_also_enforced_at_checkin_without_the_sweeper(
    client: TestClient, store: SqliteStore, clock: Clock,
) -> None:
    boxes = provision(store, 1)
    create(client, waves=["100%"], timeout_s=30)
    action = action_of(client, boxes, "b00000")
    clock.now += 31
    assert action_of(client, boxes, "b00000") is None
    closed = report(client, boxes, "b00000", action["action_id"], "installing", expect=409)   # type: ignore[index]
    assert closed["reason_code"] == "timeout"


@BOTH_BACKENDS
def test_cancel_closes_open_actions_and_drops_the_rest(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 10)
    rid = create(client, waves=["30%", "100%"])["rollout_id"]
    ids = sorted(boxes)
    running = action_of(client, boxes, ids[0])
    r = client.post(f"/api/v1/rollouts/{rid}/cancel", headers=admin())
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert action_of(client, boxes, ids[0]) is None and action_of(client, boxes, ids[5]) is None
    closed = report(client, boxes, ids[0], running["action_id"], "installing", expect=409)   # type: ignore[index]
    assert (closed["state"], closed["reason_code"]) == ("canceled", "rollout_canceled")
    assert status(client, rid)["counts"] == {"1": {"canceled": 1}, "unassigned": {"canceled": 9}}
    for command in ("cancel", "resume", "pause"):
        r = client.post(f"/api/v1/rollouts/{rid}/{command}", headers=admin())
        assert (r.status_code, r.json()["error"]) == (409, "rollout_conflict")


@BOTH_BACKENDS
def test_manual_pause_holds_new_assignments_only(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 4)
    rid = create(client, waves=["100%"])["rollout_id"]
    ids = sorted(boxes)
    running = action_of(client, boxes, ids[0])
    assert client.post(f"/api/v1/rollouts/{rid}/pause", headers=admin()).json()["status"] == "paused"
    assert action_of(client, boxes, ids[1]) is None
    assert action_of(client, boxes, ids[0]) == running              # the box already at it continues
    report(client, boxes, ids[0], running["action_id"], "success")   # type: ignore[index]
    assert client.post(f"/api/v1/rollouts/{rid}/resume", headers=admin()).json()["status"] == "running"
    for box in ids[1:]:
        run_to(client, boxes, box)
    assert status(client, rid)["status"] == "finished"
    listed = client.get(f"/api/v1/rollouts/{rid}/actions?state=success&limit=2", headers=admin()).json()
    assert [a["box_id"] for a in listed["actions"]] == ids[:2] and listed["next_after"] == ids[1]


@BOTH_BACKENDS
def test_a_box_never_runs_two_updates_at_once(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 1)
    agent = create(client, waves=["100%"])
    model = create(client, kind="model", target_name=MODEL, component="loop-anomaly", waves=["100%"])
    first = action_of(client, boxes, "b00000")
    assert first["rollout_id"] == agent["rollout_id"]   # type: ignore[index]
    assert action_of(client, boxes, "b00000") == first
    report(client, boxes, "b00000", first["action_id"], "success")   # type: ignore[index]
    assert action_of(client, boxes, "b00000")["rollout_id"] == model["rollout_id"]   # type: ignore[index]
    assert len(store.open_actions()) == 1


@BOTH_BACKENDS
def test_engine_memory_is_rebuilt_from_the_store(tmp_path: Path, store: SqliteStore, clock: Clock,
                                                  repo_dir: Path) -> None:
    boxes = provision(store, 3)
    for c in open_app(tmp_path, store, clock, repo_dir):
        create(c, waves=["1", "100%"])
        first = action_of(c, boxes, "b00000")
    for c in open_app(tmp_path, store, clock, repo_dir):     # a restarted server
        assert action_of(c, boxes, "b00000") == first
        assert action_of(c, boxes, "b00001") is None
        report(c, boxes, "b00000", first["action_id"], "success")   # type: ignore[index]
        assert action_of(c, boxes, "b00001") is not None


@BOTH_BACKENDS
def test_checkin_with_changed_etag_after_assignment(client: TestClient, store: SqliteStore) -> None:
    boxes = provision(store, 1)
    idle = checkin(client, boxes, "b00000")
    create(client, waves=["100%"])
    r = checkin(client, boxes, "b00000", idle.headers["etag"])
    assert r.status_code == 200 and r.json()["action"]["version"] == "0.2.0"
    assert r.headers["etag"] != idle.headers["etag"]
