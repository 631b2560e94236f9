"""Agent updates end to end on real processes: the supervisor (python -m agent.updater.launcher),
the agent it runs from a slot, a Modbus simulator, the check-in/telemetry server and a signed TUF
repository with Range support, all over loopback.

kill -9 at every updater state (the process that reached the state, or the whole tree as in a
power cut), a new version whose uplink never works, one that crashes at start, and a kill during
the rollback. Every run must end on the old or the new version, never in between, report exactly
one final status, and lose no acknowledged reading across the switch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import free_port, health, start_sim, stop
from pause_points import SCRIPT as PAUSE_SCRIPT
from updater_contract import ContractServer
from updater_support import (
    TufRepo,
    agent_bundle,
    box_config,
    break_uplink,
    crash_on_start,
    model_bundle,
    wait_until,
    wired_source,
)

from agent.updater.journal import Journal, State
from agent.updater.slots import Slots

pytestmark = pytest.mark.slow
TARGET = "agent-0.2.0.tar.gz"
MODEL_TARGET = "wx_fault-1.1.0.tar.gz"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("updater-e2e")
    src = wired_source(tmp / "src")
    sim, info = start_sim(tmp, "--tcp", "0")
    server = ContractServer(poll_interval_s=1)
    bundles = {"good": agent_bundle(src, "0.2.0", tmp / "good" / TARGET),
               "no_uplink": agent_bundle(src, "0.2.0", tmp / "no_uplink" / TARGET, patch=break_uplink),
               "crash": agent_bundle(src, "0.2.0", tmp / "crash" / TARGET, patch=crash_on_start)}
    yield {"src": src, "sim_port": info["tcp_port"], "server": server, "bundles": bundles}
    server.close()
    stop(sim)


@dataclass
class Box:
    tmp: Path
    name: str
    config: Path
    health_port: int
    repo: TufRepo
    server: ContractServer
    launcher: subprocess.Popen | None = None

    @property
    def root(self) -> Path:
        return self.tmp / "updater"

    def start(self, **env: str) -> subprocess.Popen:
        full = {**os.environ, "QUANEDGE_TEST_ACK_LOG": str(self.tmp / "acks.log"), **env}
        # the real supervisor and agents, with the pause points and ack log filled in (pause_points.py)
        with open(self.tmp / "launcher.log", "ab") as log:  # the child has its own copy of the descriptor
            self.launcher = subprocess.Popen([sys.executable, PAUSE_SCRIPT, "launcher", "--config", str(self.config)],
                                             stdout=subprocess.DEVNULL, stderr=log, env=full)
        return self.launcher

    def children(self) -> list[int]:
        assert self.launcher is not None
        pid = self.launcher.pid
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def healthy(self) -> bool:
        h = health(self.health_port)
        return h["uplink"]["sent"] > 0 and all(d["online"] for d in h["devices"].values())

    def log(self) -> str:
        return (self.tmp / "launcher.log").read_text()[-6000:]


@pytest.fixture
def make_box(shared, tmp_path: Path):
    boxes: list[Box] = []

    def make(bundle: str = "good", health_deadline_s: float = 20) -> Box:
        repo = TufRepo(tmp_path / "repo")
        models = ""
        if bundle == "model":
            repo.publish(model_bundle("1.1.0", tmp_path / MODEL_TARGET), kind="onnx_model", version="1.1.0")
            models = '[[model]]\nname = "wx_fault"\nversion = "1.0.0"\n'
        else:
            repo.publish(shared["bundles"][bundle], kind="agent_bundle", version="0.2.0", name=TARGET)
        name = f"upd-{len(boxes)}-{tmp_path.name[-20:]}".replace("_", "-")[:60]
        hport = free_port()
        config = box_config(tmp_path, box=name, server=shared["server"], trusted_root=repo.trusted_root(
            tmp_path / "root.json"), sim_port=shared["sim_port"], health_port=hport,
            health_deadline_s=health_deadline_s, models=models)
        Slots(tmp_path / "updater").bootstrap(shared["src"], "0.1.0")
        box = Box(tmp_path, name, config, hport, repo, shared["server"])
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        stop(box.launcher)
        box.repo.close()


def offer(box: Box) -> str:
    return box.server.offer(box.name, kind="agent", target_name=TARGET, version="0.2.0", repo_url=box.repo.url)


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def assert_clean_end(box: Box, action_id: str, state: str, version: str) -> dict:
    final = wait_until(lambda: box.server.final(action_id), 90, f"a final report ({box.log()})")
    assert final["state"] == state, (final, box.log())
    slots = Slots(box.root)
    assert slots.current_version() == version
    wait_until(lambda: box.server.inventory[box.name][-1]["agent_version"] == version, 60,
               f"agent {version} to run and report its inventory")
    wait_until(box.healthy, 60, "the running agent to be healthy")
    states = box.server.states(action_id)
    assert {s for s in states if s in ("success", "failure", "rejected", "canceled")} == {state}, states
    assert Journal(box.root / "journal.db").current() is None
    assert not list(box.root.glob("versions/*.tmp")) and not list(box.root.glob("cache/parts/*.part"))
    expected = {"0.1.0", "0.2.0"} if state == "success" else {"0.1.0"}
    assert set(slots.installed_versions()) == expected
    buffered = assert_no_reading_lost(box)
    events = [e for e in box.server.events(box.name) + buffered if e["action_id"] == action_id]
    assert state in [e["state"] for e in events], "the update left no audit trail in telemetry"
    return final


def assert_no_reading_lost(box: Box) -> list[dict]:
    """Stop the box; every acknowledged reading is at the server or still in the durable buffer."""
    wait_until(lambda: health(box.health_port)["buffer_depth"] == 0, 60, "the buffer to drain")
    box.launcher.send_signal(signal.SIGTERM)
    assert box.launcher.wait(60) == 0
    at_server = set(box.server.seqs(box.name))
    db = sqlite3.connect(box.tmp / "box" / "buffer.db")
    in_buffer = {r[0] for r in db.execute("SELECT seq FROM readings")}
    acked = [tuple(map(int, ln.split())) for ln in (box.tmp / "acks.log").read_text().split("\n") if ln.strip()]
    assert len(acked) >= 5, "too little data flowed to prove anything"
    have = at_server | in_buffer
    missing = [(a, b) for a, b in acked if not set(range(a, b + 1)) <= have]
    assert not missing, f"acknowledged readings lost: {missing[:5]}"
    seqs = sorted(have)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap in the stored sequence"
    return [json.loads(t) for (t,) in db.execute("SELECT text FROM readings WHERE point LIKE 'update.%'")]


KILL_POINTS = [
    ("accepted", "pauser"), ("downloading", "pauser"), ("downloaded", "pauser"), ("installing", "pauser"),
    ("installed", "pauser"), ("switching", "pauser"), ("switched", "pauser"), ("restarting", "pauser"),
    ("health_check", "pauser"), ("downloading", "launcher"), ("switched", "launcher"),
]


@pytest.mark.parametrize("point, victim", KILL_POINTS, ids=[f"{p}-{v}" for p, v in KILL_POINTS])
def test_kill_9_at_each_update_state_ends_on_the_new_version(make_box, point: str, victim: str) -> None:
    box = make_box()
    marker = box.tmp / "paused"
    launcher = box.start(QUANEDGE_UPDATER_PAUSE_AT=point, QUANEDGE_UPDATER_PAUSE_FILE=str(marker))
    wait_until(box.healthy, 60, f"agent 0.1.0 healthy ({box.log()})")
    action_id = offer(box)
    wait_until(marker.exists, 90, f"the pause at {point} ({box.log()})")
    pauser = int(marker.read_text().split()[0])
    if victim == "launcher" or pauser == launcher.pid:
        kill9(launcher.pid)
        launcher.wait(30)
        box.start()  # what systemd would do
    else:
        kill9(pauser)
    final = assert_clean_end(box, action_id, "success", "0.2.0")
    assert final["detail"]["to"] == "0.2.0" and final["detail"]["from"] == "0.1.0"
    if point == "downloading":
        ranged = [r for r in box.repo.target_requests() if r[1]]
        assert ranged and ranged[0][2] == 206, f"the download did not resume: {box.repo.target_requests()}"
    if point == "health_check":
        assert final["detail"]["boots"] == 2  # the killed boot counted


def test_the_new_agent_killed_during_its_health_check_is_booted_again(make_box) -> None:
    box = make_box()
    box.start()
    wait_until(box.healthy, 60, "agent 0.1.0 healthy")
    action_id = offer(box)
    journal = Journal(box.root / "journal.db")
    wait_until(lambda: (j := journal.current()) is not None and j.state is State.HEALTH_CHECK and box.children(),
               90, "the health check of 0.2.0")
    for pid in box.children():
        kill9(pid)
    final = assert_clean_end(box, action_id, "success", "0.2.0")
    assert final["detail"]["boots"] == 2


@pytest.mark.parametrize("bundle, reason", [("no_uplink", "uplink sent nothing"), ("crash", "exited with code 3")])
def test_a_new_version_that_fails_its_health_check_is_rolled_back(make_box, bundle: str, reason: str) -> None:
    box = make_box(bundle, health_deadline_s=8)
    box.start()
    wait_until(box.healthy, 60, "agent 0.1.0 healthy")
    action_id = offer(box)
    final = assert_clean_end(box, action_id, "failure", "0.1.0")
    assert final["reason_code"] == "health_check_failed" and reason in final["reason"], final
    assert final["detail"]["rolled_back_to"] == "0.1.0"


def test_kill_9_during_the_rollback_still_ends_on_the_old_version(make_box) -> None:
    box = make_box("no_uplink", health_deadline_s=6)
    marker = box.tmp / "paused"
    launcher = box.start(QUANEDGE_UPDATER_PAUSE_AT="rolling_back", QUANEDGE_UPDATER_PAUSE_FILE=str(marker))
    wait_until(box.healthy, 60, "agent 0.1.0 healthy")
    action_id = offer(box)
    wait_until(marker.exists, 90, f"the pause at rolling_back ({box.log()})")
    assert Journal(box.root / "journal.db").current().state is State.ROLLING_BACK
    kill9(launcher.pid)
    launcher.wait(30)
    box.start()
    final = assert_clean_end(box, action_id, "failure", "0.1.0")
    assert "uplink sent nothing" in final["reason"]


@pytest.mark.parametrize("point", ["switching", "switched", "health_check"])
def test_kill_9_during_a_model_swap_ends_on_the_new_model(make_box, point: str) -> None:
    box = make_box("model")
    marker = box.tmp / "paused"
    box.start(QUANEDGE_UPDATER_PAUSE_AT=point, QUANEDGE_UPDATER_PAUSE_FILE=str(marker))
    wait_until(box.healthy, 60, f"agent healthy ({box.log()})")
    # healthy does not mean the first inventory report has landed yet: wait for it
    wait_until(lambda: box.server.inventory.get(box.name, [{}])[-1].get("models") == {"wx_fault": "1.0.0"}, 30,
               f"the first inventory report ({box.log()})")
    action_id = box.server.offer(box.name, kind="model", target_name=MODEL_TARGET, version="1.1.0",
                                 repo_url=box.repo.url)
    wait_until(marker.exists, 90, f"the pause at {point} ({box.log()})")
    kill9(int(marker.read_text().split()[0]))  # the agent: the supervisor restarts it
    final = wait_until(lambda: box.server.final(action_id), 90, f"a final report ({box.log()})")
    assert final["state"] == "success", final
    wait_until(lambda: box.server.inventory[box.name][-1]["models"] == {"wx_fault": "1.1.0"}, 60,
               "the restarted agent to run the new model")
    assert Journal(box.root / "journal.db").installed("model") == {"wx_fault": "1.1.0"}
    assert Slots(box.root).current_version() == "0.1.0"  # the agent itself did not change
    buffered = assert_no_reading_lost(box)
    assert "success" in [e["state"] for e in box.server.events(box.name) + buffered if e["action_id"] == action_id]
