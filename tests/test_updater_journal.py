"""The update journal: transitions, compare-and-set between processes, atomic finish, the outbox,
and durability across kill -9 of a real process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.updater.config import UpdaterConfig, parse_updater
from agent.updater.journal import Action, Journal, JournalConflict, State
from core.config_reader import Table
from core.errors import ConfigError

ACTION = {"action_id": "r-0a1b.box-1", "rollout_id": "r-0a1b", "kind": "agent", "target_name": "agent-0.2.0.tar.gz",
          "version": "0.2.0", "repo_url": "http://127.0.0.1:1/tuf", "deadline_s": 600}


def action(**kw) -> Action:
    return Action.from_json({**ACTION, **kw})


def test_a_job_walks_its_states_and_queues_the_contract_reports(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    job = j.begin(action())
    for state in (State.DOWNLOADING, State.DOWNLOADED, State.INSTALLING, State.INSTALLED, State.SWITCHING,
                  State.RESTARTING, State.HEALTH_CHECK):
        job = j.advance(job, state)
    assert j.current().state is State.HEALTH_CHECK
    with pytest.raises(ValueError, match="health_check -> downloading"):
        j.advance(job, State.DOWNLOADING)
    j.finish(job, "success", installed=("agent", "", "0.2.0"))
    assert j.current() is None
    assert j.final_state("r-0a1b.box-1") == "success"
    assert j.installed("agent") == {"": "0.2.0"}
    assert [r.state for r in j.pending_reports()] == [
        "proceeding", "downloading", "downloaded", "installing", "restarting", "success"]
    j.begin(action(action_id="r-0a1c.box-1"))  # the next update may start


def test_only_one_job_at_a_time(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    j.begin(action())
    with pytest.raises(JournalConflict, match="already in progress"):
        j.begin(action(action_id="r-0a1c.box-1"))


def test_two_processes_cannot_both_move_the_same_state(tmp_path: Path) -> None:
    agent_side, supervisor_side = Journal(tmp_path / "j.db"), Journal(tmp_path / "j.db")
    job = agent_side.begin(action())
    job = agent_side.advance(job, State.DOWNLOADING)
    stale = supervisor_side.current()
    agent_side.advance(job, State.DOWNLOADED)
    with pytest.raises(JournalConflict):
        supervisor_side.advance(stale, State.DOWNLOADED)
    with pytest.raises(JournalConflict):
        supervisor_side.finish(stale, "failure")
    assert agent_side.current().state is State.DOWNLOADED


def test_finish_is_atomic_and_outbox_delivery_is_durable(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db")
    job = j.begin(action())
    j.finish(job, "rejected", reason="downgrade", reason_code="downgrade")
    reports = j.pending_reports()
    j.mark_emitted([r.id for r in reports])
    j.mark_delivered(reports[0].id)
    j.close()
    again = Journal(tmp_path / "j.db")
    left = again.pending_reports()
    assert [(r.state, r.reason_code, r.delivered, r.emitted) for r in left] == [("rejected", "downgrade", False, True)]
    assert left[0].body() == {"state": "rejected", "reason": "downgrade", "reason_code": "downgrade", "detail": None}


def test_the_journal_file_is_in_wal_mode(tmp_path: Path) -> None:
    Journal(tmp_path / "j.db").begin(action())
    db = sqlite3.connect(tmp_path / "j.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


CRASH = """
import os, signal, sys
from agent.updater.journal import Action, Journal, State
j = Journal(sys.argv[1])
job = j.begin(Action.from_json({"action_id": "r-1.b", "rollout_id": "r-1", "kind": "model",
    "target_name": "wx_fault-1.1.0.tar.gz", "version": "1.1.0", "repo_url": "http://x/", "deadline_s": 60}))
job = j.advance(job, State.DOWNLOADING)
job = j.record_progress(job, "abc.wx_fault-1.1.0.tar.gz", 131072)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_state_the_journal_returned_from_survives_kill_9(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path / "j.db")], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    job = Journal(tmp_path / "j.db").current()
    assert (job.state, job.part_name, job.offset) == (State.DOWNLOADING, "abc.wx_fault-1.1.0.tar.gz", 131072)
    assert job.deadline == pytest.approx(job.accepted_at + 60)


@pytest.mark.parametrize("bad, match", [
    ({"kind": "os"}, "action.kind"),
    ({"target_name": "../etc/passwd"}, "target_name"),
    ({"version": "latest"}, "not a version"),
    ({"repo_url": "ftp://x/"}, "repo_url"),
    ({"deadline_s": 0}, "deadline_s"),
    ({"action_id": "a b"}, "action_id"),
])
def test_a_malformed_action_is_refused_naming_the_field(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        action(**bad)


def test_updater_config_section(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("{}")
    cfg = parse_updater(Table({"enabled": True, "trusted_root": "root.json", "poll_interval_s": 30}, "box.toml",
                              "updater"), data_dir=tmp_path / "data", base_dir=tmp_path)
    assert cfg == UpdaterConfig(enabled=True, root=tmp_path / "data" / "updater", trusted_root=root,
                                poll_interval_s=30.0)
    assert parse_updater(None, data_dir=tmp_path, base_dir=tmp_path).enabled is False
    with pytest.raises(ConfigError, match=r"\[updater.trusted_root\].*needs the fleet's TUF root"):
        parse_updater(Table({"enabled": True}, "box.toml", "updater"), data_dir=tmp_path, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"\[updater.health_deadline\]: unknown key"):
        parse_updater(Table({"health_deadline": 3}, "box.toml", "updater"), data_dir=tmp_path, base_dir=tmp_path)
