"""The embedded default `Store`: one SQLite file through sqlite-utils.

One connection, guarded by a lock (the API calls in from threadpool threads), WAL journal with
synchronous=FULL: a batch the server has acknowledged is on disk, because the box deletes it from
its own buffer on that acknowledgement. sqlite3 errors become `StoreError` here and nowhere else.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from sqlite_utils import Database

from core.reading import Quality, Reading, RecordClass
from fleet_server.errors import StoreError, UnknownBox
from fleet_server.rollout.model import Inventory
from fleet_server.seq_tracking import SeqReport, seq_ranges
from fleet_server.store.base import Box, IngestResult, check_box_id, hash_secret, new_secret
from fleet_server.store.sqlite_admission import ADMISSION_MIGRATIONS, AdmissionTables
from fleet_server.store.sqlite_alerts import ALERT_MIGRATIONS, AlertTables
from fleet_server.store.sqlite_audit import AUDIT_MIGRATIONS, AuditTables
from fleet_server.store.sqlite_quarantine import QUARANTINE_MIGRATIONS, QuarantineTables
from fleet_server.store.sqlite_rollouts import RolloutTables
from fleet_server.store.sqlite_schema import apply_migrations, migrate, migrate_rollouts
from fleet_server.store.sqlite_seq import BOX_AND_SEQ, SEQ_MIGRATIONS, SeqTables, check_report, seq_state, track_batch
from fleet_server.store.sqlite_users import USER_MIGRATIONS, UserTables

__all__ = ["SqliteStore"]

_BOX_COLUMNS = (
    "box_id, hardware, site, agent_version, tags, enrolled_at, last_seen, max_seq, online, status_ts"
)
_READING_COLUMNS = "seq, ts, device, point, value, unit, quality, cls, text"
_MAX_INT = 2**63 - 1  # SQLite INTEGER range
# Only the (box_id, seq) key conflict is a duplicate; unlike INSERT OR IGNORE, this does not also
# swallow NOT NULL violations (which would then be miscounted as duplicates).
_INSERT_READING = (
    "INSERT INTO readings (box_id, seq, ts, device, point, value, unit, quality, cls, text)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (box_id, seq) DO NOTHING"
)



class _Prepared(NamedTuple):
    """A batch checked and turned into insert parameters, outside the write lock."""

    box_id: str
    params: list[tuple]
    ranges: list
    report: SeqReport | None

class SqliteStore(AdmissionTables, RolloutTables, QuarantineTables, UserTables, AuditTables, AlertTables,
                  SeqTables):
    """`Store` backed by one SQLite file. `clock` (unix seconds) is injectable for tests.

    Enrolment and admission (tokens, re-key, pending requests, revocation) live in the
    `AdmissionTables` mixin; rollout storage (inventory, sites, rollouts, actions) in
    `RolloutTables`; the quarantine of unprocessable messages in `QuarantineTables`; API users in
    `UserTables`; the append-only audit log in `AuditTables`; alerts in `AlertTables`; seq
    tracking's tables in `SeqTables` (its per-batch step runs inside `ingest`).
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open fleet database {self.path!r}: {exc}") from exc
        try:
            self._db = Database(conn, execute_plugins=False)
            if self.path != ":memory:":
                self._db.enable_wal()
            conn.execute("PRAGMA synchronous=FULL")
            self.migrations_applied = migrate(self._db)
            self.rollout_migrations_applied = migrate_rollouts(self._db)
            self.quarantine_migrations_applied = apply_migrations(QUARANTINE_MIGRATIONS, self._db)
            self.user_migrations_applied = apply_migrations(USER_MIGRATIONS, self._db)
            self.audit_migrations_applied = apply_migrations(AUDIT_MIGRATIONS, self._db)
            self.admission_migrations_applied = apply_migrations(ADMISSION_MIGRATIONS, self._db)
            self.alert_migrations_applied = apply_migrations(ALERT_MIGRATIONS, self._db)
            self.seq_migrations_applied = apply_migrations(SEQ_MIGRATIONS, self._db)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot prepare fleet database {self.path!r}: {exc}") from exc
        self._closed = False
        self._credential_generation = 0

    @contextmanager
    def _conn(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The single boundary: lock, optional transaction, sqlite3 errors -> StoreError."""
        with self._lock:
            if self._closed:
                raise StoreError(f"fleet database {self.path!r} is closed")
            try:
                if write:
                    with self._db.atomic():
                        yield self._db.conn
                else:
                    yield self._db.conn
            except sqlite3.Error as exc:
                raise StoreError(f"fleet database {self.path!r}: {exc}") from exc

    def credential_generation(self) -> int:
        """Changes whenever an existing credential stops working (see `Store`)."""
        return self._credential_generation

    def provision_boxes(
        self, boxes: Sequence[tuple[str, str, str, Sequence[str], Inventory | None]]
    ) -> list[str]:
        """Enroll many NEW boxes at once (box_id, hardware, site, tags, inventory); one credential each.

        The admin's bulk path (factory pre-authorisation, simulators): no token is spent, and one
        transaction covers all of them. Any id already enrolled refuses the whole batch.
        """
        credentials = [new_secret() for _ in boxes]
        now = self._clock()
        rows, inventory, versions = [], [], []
        for (box_id, hardware, site, tags, inv), credential in zip(boxes, credentials):
            check_box_id(box_id)
            if not hardware or isinstance(tags, str):
                raise ValueError(f"box {box_id!r}: hardware must be non-empty and tags a list")
            rows.append((box_id, hardware, site, inv.agent_version if inv else "", json.dumps(list(tags)),
                         hash_secret(credential), now))
            if inv is not None:
                inventory.append((box_id, inv.hardware, inv.agent_version, json.dumps(dict(inv.models)),
                                  json.dumps(dict(inv.firmware)), now))
                versions += [(box_id, *v) for v in inv.versions()]
        with self._conn(write=True) as conn:
            try:
                conn.executemany(
                    "INSERT INTO boxes (box_id, hardware, site, agent_version, tags, credential_hash,"
                    " enrolled_at, max_seq, online) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)", rows)
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"a box in the batch is already enrolled: {exc}") from None
            conn.executemany("INSERT INTO box_inventory VALUES (?, ?, ?, ?, ?, ?)", inventory)
            conn.executemany("INSERT INTO box_versions VALUES (?, ?, ?, ?)", versions)
        return credentials

    # -- boxes -----------------------------------------------------------------------------

    def box_for_credential(self, credential: str) -> Box | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_BOX_COLUMNS} FROM boxes WHERE credential_hash = ?",
                (hash_secret(credential),),
            ).fetchone()
        return None if row is None else _box(row)

    def get_box(self, box_id: str) -> Box | None:
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_BOX_COLUMNS} FROM boxes WHERE box_id = ?", (box_id,)).fetchone()
        return None if row is None else _box(row)

    def list_boxes(self) -> list[Box]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_BOX_COLUMNS} FROM boxes ORDER BY box_id").fetchall()
        return [_box(row) for row in rows]

    def count_boxes(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT count(*) FROM boxes").fetchone()[0])

    def set_box_status(self, box_id: str, online: bool, ts: float) -> None:
        now = self._clock()
        with self._conn(write=True) as conn:
            cursor = conn.execute(
                "UPDATE boxes SET online = ?, status_ts = ?, last_seen = ? WHERE box_id = ?",
                (int(online), ts, now, box_id),
            )
            if not cursor.rowcount:
                raise UnknownBox(box_id)

    # -- readings --------------------------------------------------------------------------

    def ingest(self, box_id: str, rows: Sequence[Reading], report: SeqReport | None = None) -> IngestResult:
        prepared = self._prepare(box_id, rows, report)
        with self._conn(write=True) as conn:
            return self._store_batch(conn, prepared, self._clock())

    def ingest_many(
        self, batches: Sequence[tuple[str, Sequence[Reading], SeqReport | None]],
    ) -> list[IngestResult | UnknownBox]:
        """Several batches in ONE transaction (one commit, one fsync): a batch for an unknown box is
        rolled back alone (its savepoint) and answered UnknownBox; the others commit together."""
        prepared = [self._prepare(box_id, rows, report) for box_id, rows, report in batches]
        now = self._clock()
        outcomes: list[IngestResult | UnknownBox] = []
        with self._conn(write=True) as conn:
            for batch in prepared:
                conn.execute("SAVEPOINT one_batch")
                try:
                    outcomes.append(self._store_batch(conn, batch, now))
                except UnknownBox as exc:
                    conn.execute("ROLLBACK TO one_batch")
                    outcomes.append(exc)
                conn.execute("RELEASE one_batch")
        return outcomes

    def _prepare(self, box_id: str, rows: Sequence[Reading], report: SeqReport | None) -> _Prepared:
        params = [
            (box_id, r.seq, r.ts, r.device, r.point, r.value, r.unit, int(r.quality), r.cls.value, r.text)
            for r in rows
        ]
        seqs = []
        for p in params:
            seq, quality = p[1], p[7]
            if seq is None or not 1 <= seq <= _MAX_INT:
                raise ValueError(f"every reading needs a seq in 1..2**63-1 to be stored, got {seq!r}")
            if not 0 <= quality <= _MAX_INT:
                raise ValueError(f"quality must fit in 63 bits, got {quality!r}")
            seqs.append(seq)
        if report is not None:
            check_report(report)
        return _Prepared(box_id, params, seq_ranges(seqs), report)

    def _store_batch(self, conn: sqlite3.Connection, batch: _Prepared, now: float) -> IngestResult:
        box_id, params, ranges, report = batch
        first_seq, last_seq = (ranges[0][0], ranges[-1][1]) if ranges else (None, None)
        found = conn.execute(BOX_AND_SEQ, (box_id,)).fetchone()
        if found is None:
            raise UnknownBox(box_id)
        accepted = conn.executemany(_INSERT_READING, params).rowcount if params else 0
        max_seq = max(int(found[0]), last_seq or 0)
        conn.execute("UPDATE boxes SET max_seq = ?, last_seen = ? WHERE box_id = ?", (max_seq, now, box_id))
        tracked, dropped = track_batch(conn, box_id, seq_state(found[1:], int(found[0])), ranges, report, now)
        return IngestResult(accepted=accepted, duplicates=len(params) - accepted, max_seq=max_seq,
                            first_seq=first_seq, last_seq=last_seq, rows=len(params), seq_gaps=tracked.gaps,
                            dropped=dropped)

    def readings(
        self, box_id: str, after_seq: int = 0, limit: int = 1000,
        device: str | None = None, point: str | None = None,
    ) -> list[Reading]:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        sql = f"SELECT {_READING_COLUMNS} FROM readings WHERE box_id = ? AND seq > ?"
        args: list[Any] = [box_id, after_seq]
        if device is not None:
            sql += " AND device = ?"
            args.append(device)
        if point is not None:
            sql += " AND point = ?"
            args.append(point)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._conn() as conn:
            if conn.execute("SELECT 1 FROM boxes WHERE box_id = ?", (box_id,)).fetchone() is None:
                raise UnknownBox(box_id)
            rows = conn.execute(sql, args).fetchall()
        return [_reading(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _box(row: tuple[Any, ...]) -> Box:
    box_id, hardware, site, agent_version, tags, enrolled_at, last_seen, max_seq, online, status_ts = row
    return Box(
        box_id=box_id, hardware=hardware, site=site, agent_version=agent_version,
        tags=tuple(json.loads(tags)), enrolled_at=enrolled_at, last_seen=last_seen,
        max_seq=int(max_seq), online=bool(online), status_ts=status_ts,
    )


def _reading(row: tuple[Any, ...]) -> Reading:
    seq, ts, device, point, value, unit, quality, cls, text = row
    return Reading(
        device=device, point=point, value=value, unit=unit, ts=ts, quality=Quality(quality),
        cls=RecordClass(cls), text=text, seq=seq,
    )
