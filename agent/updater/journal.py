"""The update journal: one SQLite file that says where the box's one current update stands.

Same durability discipline as the buffer (WAL, synchronous=FULL): a state the journal returned
from is on disk, so kill -9 or a power cut at any step leaves a state to resume from or to roll
back from. Every step is written BEFORE it is done ("intent first"), and every step is
idempotent, so a crash between the write and the deed is resumed by doing the deed again.

    job      0 or 1 row: the server's action (JSON), state, byte offset of the download, the
             verified file, slot_from/slot_to, attempts, boot attempts, deadlines, reason
    outbox   status reports in order (an outbox: appended in the same transaction as the state
             change, re-sent until the server answers 200/404/409, and emitted once as EVENT
             readings), so no report is lost across crashes
    history  finished actions and their final state: an action the server offers again (our
             final report not yet delivered) is never run twice
    installed  (kind, component) -> version committed by an update (models; the agent's own
             version is the `current` slot)

States (`State`) and who drives them:

    accepted -> downloading -> downloaded -> installing -> installed -> switching   agent process
    agent bundle: switching -> restarting -> health_check -> (commit | rolling_back)  supervisor
    model:        switching -> health_check -> (commit | rolling_back)             agent process
    commit / failure / rejection = `finish()`: the job row moves to history and the final report
    enters the outbox in ONE transaction.

Two processes share the file (the agent and its supervisor). Every change is a compare-and-set
on (action_id, state): a writer that lost a race gets `JournalConflict` instead of overwriting.
Schema changes must stay additive (new nullable columns): after a rollback the OLD agent reads
a journal the new one may have migrated.
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.contracts import FINAL_STATES, KIND_TO_TARGET
from core.errors import QuanedgeError, StorageError
from firmware_manifests.schema import Version

__all__ = ["Action", "Job", "Journal", "JournalConflict", "Report", "State", "FINAL_STATES", "KIND_TO_TARGET"]

SCHEMA_VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TARGET_RE = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")


class State(str, enum.Enum):
    ACCEPTED = "accepted"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    SWITCHING = "switching"
    RESTARTING = "restarting"
    HEALTH_CHECK = "health_check"
    ROLLING_BACK = "rolling_back"


#: the status the server hears when a job enters a state (the contract's non-final states)
REPORTED = {State.ACCEPTED: "proceeding", State.DOWNLOADING: "downloading", State.DOWNLOADED: "downloaded",
            State.INSTALLING: "installing", State.RESTARTING: "restarting"}
_NEXT = {
    State.ACCEPTED: {State.DOWNLOADING},
    State.DOWNLOADING: {State.DOWNLOADED},
    State.DOWNLOADED: {State.INSTALLING},
    State.INSTALLING: {State.INSTALLED},
    State.INSTALLED: {State.SWITCHING},
    State.SWITCHING: {State.RESTARTING, State.HEALTH_CHECK, State.ROLLING_BACK},
    State.RESTARTING: {State.HEALTH_CHECK, State.ROLLING_BACK},
    State.HEALTH_CHECK: {State.ROLLING_BACK},
    State.ROLLING_BACK: set(),
}


class JournalConflict(QuanedgeError):
    """The job changed under us (another process advanced or finished it)."""


@dataclass(frozen=True, slots=True)
class Action:
    """One update the server asked for (the check-in contract's `action` object), validated."""

    action_id: str
    rollout_id: str
    kind: str
    target_name: str
    version: str
    repo_url: str
    deadline_s: float
    component: str = ""

    @classmethod
    def from_json(cls, data: Any) -> Action:
        """Raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"action must be an object, got {data!r:.80}")

        def text(name: str, pattern: re.Pattern | None = None, required: bool = True) -> str:
            v = data.get(name, None if required else "")
            if not isinstance(v, str) or (required and not v) or (pattern and v and not pattern.match(v)):
                raise ValueError(f"action.{name} is invalid: {v!r:.80}")
            return v

        kind = text("kind")
        if kind not in KIND_TO_TARGET:
            raise ValueError(f"action.kind must be one of {', '.join(KIND_TO_TARGET)}, got {kind!r:.40}")
        target = text("target_name", _TARGET_RE)
        if ".." in target.split("/") or target.startswith("/"):
            raise ValueError(f"action.target_name is invalid: {target!r:.80}")
        version = text("version")
        Version.parse(version)  # raises ValueError
        repo_url = text("repo_url")
        if urlsplit(repo_url).scheme not in ("http", "https") or not urlsplit(repo_url).netloc:
            raise ValueError(f"action.repo_url must be an http(s) URL, got {repo_url!r:.80}")
        deadline = data.get("deadline_s")
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline <= 31 * 86400:
            raise ValueError(f"action.deadline_s must be seconds > 0, got {deadline!r:.40}")
        return cls(text("action_id", _ID_RE), text("rollout_id", _ID_RE), kind, target, version, repo_url,
                   float(deadline), text("component", _ID_RE, required=False))

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def target_kind(self) -> str:
        return KIND_TO_TARGET[self.kind]


@dataclass(frozen=True, slots=True)
class Job:
    action: Action
    state: State
    accepted_at: float
    deadline: float
    updated_at: float
    offset: int = 0
    part_name: str | None = None
    file_path: str | None = None
    sha256: str | None = None
    length: int | None = None
    slot_from: str | None = None
    slot_to: str | None = None
    attempts: int = 0
    boot_attempts: int = 0
    health_deadline: float | None = None
    reason: str | None = None
    reason_code: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    action: Action
    state: str
    reason: str | None
    reason_code: str | None
    detail: dict[str, Any] | None
    created_at: float
    emitted: bool
    delivered: bool

    def body(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "reason_code": self.reason_code, "detail": self.detail}


_JOB_COLS = ("state", "accepted_at", "deadline", "updated_at", "offset", "part_name", "file_path", "sha256",
             "length", "slot_from", "slot_to", "attempts", "boot_attempts", "health_deadline", "reason",
             "reason_code")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY CHECK (id = 1), action_id TEXT NOT NULL, action TEXT NOT NULL,
    state TEXT NOT NULL, accepted_at REAL NOT NULL, deadline REAL NOT NULL, updated_at REAL NOT NULL,
    "offset" INTEGER NOT NULL DEFAULT 0, part_name TEXT, file_path TEXT, sha256 TEXT, length INTEGER,
    slot_from TEXT, slot_to TEXT, attempts INTEGER NOT NULL DEFAULT 0, boot_attempts INTEGER NOT NULL DEFAULT 0,
    health_deadline REAL, reason TEXT, reason_code TEXT);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, action_id TEXT NOT NULL, action TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT, reason_code TEXT, detail TEXT, created_at REAL NOT NULL,
    emitted INTEGER NOT NULL DEFAULT 0, done INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS history (
    action_id TEXT PRIMARY KEY, action TEXT NOT NULL, final_state TEXT NOT NULL, reason TEXT,
    reason_code TEXT, finished_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS installed (
    kind TEXT NOT NULL, component TEXT NOT NULL, version TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (kind, component));
INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
"""
_KEEP_HISTORY = 500
_KEEP_REPORTS = 500


class Journal:
    """Thread-safe (one connection behind a lock); small synchronous calls (one fsync each)."""

    def __init__(self, path: Path, *, clock=time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch SQLite to WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            with self._lock:
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open the update journal: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- transactions ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self, what: str = "write") -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the lock; sqlite3 errors become StorageError here only."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: cannot {what}: {exc}") from exc

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: read failed: {exc}") from exc

    # --- the job -----------------------------------------------------------------------------
    def current(self) -> Job | None:
        rows = self._read(f'SELECT action, {", ".join(_q(c) for c in _JOB_COLS)} FROM job WHERE id = 1')
        if not rows:
            return None
        action_json, *values = rows[0]
        data = dict(zip(_JOB_COLS, values))
        data["state"] = State(data["state"])
        return Job(action=Action.from_json(json.loads(action_json)), **data)

    def begin(self, action: Action) -> Job:
        """Record a new job (state accepted) and queue `proceeding`. Raises JournalConflict if a job exists."""
        now = self._clock()
        job = Job(action, State.ACCEPTED, now, now + action.deadline_s, now)
        with self._tx("record the update") as db:
            if db.execute("SELECT 1 FROM job").fetchone():
                raise JournalConflict("an update is already in progress")
            cols = ("action_id", "action", *_JOB_COLS)
            names, marks = ", ".join(_q(c) for c in cols), ", ".join("?" * len(cols))
            db.execute(f"INSERT INTO job (id, {names}) VALUES (1, {marks})",
                       (action.action_id, json.dumps(action.to_json()), *self._values(job)))
            self._queue(db, action, "proceeding", None, None, None, now)
        return job

    def advance(self, job: Job, state: State, *, report: bool = True, detail: dict | None = None,
                **changes: Any) -> Job:
        """Move `job` to `state` (or stay in it, updating fields). Compare-and-set on (action, state)."""
        if state != job.state and state not in _NEXT[job.state]:
            raise ValueError(f"update journal: no transition {job.state.value} -> {state.value}")
        now = self._clock()
        new = replace(job, state=state, updated_at=now, **changes)
        with self._tx("record the update state") as db:
            self._cas(db, job, new)
            if report and state != job.state and state in REPORTED:
                self._queue(db, job.action, REPORTED[state], None, None, detail, now)
        return new

    def record_progress(self, job: Job, part_name: str, offset: int) -> Job:
        """The durable length of the download's .part file (called after its fsync)."""
        return self.advance(job, job.state, part_name=part_name, offset=offset)

    def finish(self, job: Job, final_state: str, *, reason: str | None = None, reason_code: str | None = None,
               detail: dict | None = None, installed: tuple[str, str, str] | None = None) -> None:
        """Close the job: history row, final report and (on success) the installed version, atomically."""
        if final_state not in FINAL_STATES:
            raise ValueError(f"not a final state: {final_state!r}")
        now = self._clock()
        with self._tx("record the update result") as db:
            cur = db.execute("DELETE FROM job WHERE id = 1 AND action_id = ? AND state = ?",
                             (job.action.action_id, job.state.value))
            if cur.rowcount != 1:
                raise JournalConflict(f"update {job.action.action_id} is no longer in state {job.state.value}")
            self._close(db, job.action, final_state, reason, reason_code, now)
            self._queue(db, job.action, final_state, reason, reason_code, detail, now)
            if installed is not None:
                db.execute("INSERT INTO installed(kind, component, version, at) VALUES (?,?,?,?) "
                           "ON CONFLICT(kind, component) DO UPDATE SET version=excluded.version, at=excluded.at",
                           (*installed, now))

    def drop(self, job: Job, final_state: str, *, reason: str | None = None, reason_code: str | None = None) -> None:
        """Close the job WITHOUT a report: the server already closed the action (409)."""
        now = self._clock()
        with self._tx() as db:
            db.execute("DELETE FROM job WHERE id = 1 AND action_id = ?", (job.action.action_id,))
            self._close(db, job.action, final_state, reason, reason_code, now)

    def final_state(self, action_id: str) -> str | None:
        rows = self._read("SELECT final_state FROM history WHERE action_id = ?", (action_id,))
        return rows[0][0] if rows else None

    # --- outbox --------------------------------------------------------------------------------
    def pending_reports(self, limit: int = 100) -> list[Report]:
        rows = self._read("SELECT id, action, state, reason, reason_code, detail, created_at, emitted, done "
                          "FROM outbox WHERE done = 0 OR emitted = 0 ORDER BY id LIMIT ?", (limit,))
        return [Report(r[0], Action.from_json(json.loads(r[1])), r[2], r[3], r[4],
                       json.loads(r[5]) if r[5] else None, r[6], bool(r[7]), bool(r[8])) for r in rows]

    def mark_emitted(self, ids: list[int]) -> None:
        with self._tx() as db:
            db.executemany("UPDATE outbox SET emitted = 1 WHERE id = ?", [(i,) for i in ids])

    def mark_delivered(self, report_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET done = 1 WHERE id = ?", (report_id,))
            db.execute("DELETE FROM outbox WHERE done = 1 AND emitted = 1 AND id <= "
                       "(SELECT max(id) FROM outbox) - ?", (_KEEP_REPORTS,))

    def undelivered(self) -> int:
        return self._read("SELECT count(*) FROM outbox WHERE done = 0")[0][0]

    # --- installed versions ------------------------------------------------------------------
    def installed(self, kind: str) -> dict[str, str]:
        return dict(self._read("SELECT component, version FROM installed WHERE kind = ?", (kind,)))

    # --- internals -----------------------------------------------------------------------------
    @staticmethod
    def _values(job: Job) -> tuple:
        return tuple(getattr(job, c).value if c == "state" else getattr(job, c) for c in _JOB_COLS)

    def _cas(self, db: sqlite3.Connection, old: Job, new: Job) -> None:
        sets = ", ".join(f"{_q(c)} = ?" for c in _JOB_COLS)
        cur = db.execute(f"UPDATE job SET {sets} WHERE id = 1 AND action_id = ? AND state = ?",
                         (*self._values(new), old.action.action_id, old.state.value))
        if cur.rowcount != 1:
            raise JournalConflict(f"update {old.action.action_id} is no longer in state {old.state.value}")

    @staticmethod
    def _queue(db: sqlite3.Connection, action: Action, state: str, reason: str | None, code: str | None,
               detail: dict | None, now: float) -> None:
        db.execute("INSERT INTO outbox(action_id, action, state, reason, reason_code, detail, created_at) "
                   "VALUES (?,?,?,?,?,?,?)",
                   (action.action_id, json.dumps(action.to_json()), state, _clip(reason, 1000), _clip(code, 64),
                    json.dumps(detail) if detail else None, now))

    @staticmethod
    def _close(db: sqlite3.Connection, action: Action, final: str, reason: str | None, code: str | None,
               now: float) -> None:
        db.execute("INSERT OR REPLACE INTO history(action_id, action, final_state, reason, reason_code, finished_at) "
                   "VALUES (?,?,?,?,?,?)", (action.action_id, json.dumps(action.to_json()), final, reason, code, now))
        db.execute("DELETE FROM history WHERE finished_at < (SELECT finished_at FROM history "
                   "ORDER BY finished_at DESC LIMIT 1 OFFSET ?)", (_KEEP_HISTORY,))


def _q(col: str) -> str:
    return f'"{col}"'


def _clip(text: str | None, n: int) -> str | None:
    return None if text is None else text[:n]
