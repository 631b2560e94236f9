"""Boxes and readings, written once for both SQL backends (a mixin of `SqliteStore` and `PgStore`).

The backend gives `_conn(write=, lock=)` (its transaction and error boundary), `_sql` (its
dialect, fleet_server.store.sql), `_clock`, `_credentials_changed(conn)` and
`_insert_readings(conn, params) -> rows newly stored` (SQLite: one executemany; PostgreSQL: COPY
into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING).

Ingest takes the box's lock (`_sql.lock(conn, "box:<id>")`) before it reads the box's seq state,
so two server processes storing batches of one box advance its seq tracking one after the other;
`ingest_many` takes its boxes' locks in sorted order first, so two groups never deadlock.

Readings out (`readings_page`, fleet_server.readings_out): one keyset query,
`WHERE (ts, box_id, seq) > (?, ?, ?) ... ORDER BY ts, box_id, seq LIMIT n + 1` (row values:
PostgreSQL, and SQLite since 3.15), served on both backends by the index `readings_by_time
(ts, box_id, seq)` (PostgreSQL prunes the day partitions outside since/until, and the classes
other than `cls`, too). The extra row says whether another page follows. A box filter is written
through the dialect's `filter_only`, so SQLite keeps walking the time index instead of sorting
the box's whole history for every page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from core.reading import Quality, Reading, RecordClass
from fleet_server.errors import UnknownBox
from fleet_server.readings_out import BoxReading, ReadingKey, ReadingsQuery
from fleet_server.rollout.model import Inventory
from fleet_server.seq_tracking import SeqReport, seq_ranges
from fleet_server.store.base import Box, IngestResult, check_box_id, hash_secret, new_secret
from fleet_server.store.sql import SqlConn, SqlDialect
from fleet_server.store.sql_commands import apply_results
from fleet_server.store.sql_seq import BOX_AND_SEQ, check_report, seq_state, track_batch

__all__ = ["BOX_COLUMNS", "READING_COLUMNS", "BoxTables", "Prepared", "box_from_row", "reading_from_row"]

BOX_COLUMNS = (
    "box_id, hardware, site, agent_version, tags, enrolled_at, last_seen, max_seq, online, status_ts"
)
READING_COLUMNS = "seq, ts, device, point, value, unit, quality, cls, text"
_MAX_INT = 2**63 - 1  # the INTEGER / bigint range


class Prepared(NamedTuple):
    """A batch checked and turned into insert parameters, outside any lock."""

    box_id: str
    params: list[tuple[Any, ...]]
    ranges: list[tuple[int, int]]
    report: SeqReport | None


class BoxTables:
    """Boxes (provisioning, lookups, status) and readings (ingest, pages) of the `Store` Protocol."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]
    _sql: SqlDialect
    _clock: Callable[[], float]
    _credentials_changed: Callable[[SqlConn], None]
    _insert_readings: Callable[[SqlConn, list[tuple[Any, ...]]], int]

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
        with self._conn(write=True, lock="admission") as conn:
            taken = [r[0] for r in conn.execute(
                f"SELECT box_id FROM boxes WHERE box_id IN (SELECT value FROM {self._sql.json_values('?')})",
                (json.dumps([r[0] for r in rows]),)).fetchall()]
            if taken or len({r[0] for r in rows}) != len(rows):
                raise ValueError(f"a box in the batch is already enrolled or given twice: {sorted(taken)[:5]}")
            conn.executemany(
                "INSERT INTO boxes (box_id, hardware, site, agent_version, tags, credential_hash,"
                " enrolled_at, max_seq, online) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)", rows)
            conn.executemany("INSERT INTO box_inventory VALUES (?, ?, ?, ?, ?, ?)", inventory)
            conn.executemany("INSERT INTO box_versions VALUES (?, ?, ?, ?)", versions)
        return credentials

    # -- boxes -----------------------------------------------------------------------------

    def box_for_credential(self, credential: str) -> Box | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {BOX_COLUMNS} FROM boxes WHERE credential_hash = ?",
                (hash_secret(credential),),
            ).fetchone()
        return None if row is None else box_from_row(row)

    def credential_index(self, limit: int) -> list[tuple[str, str, str]] | None:
        with self._conn() as conn:
            rows = conn.execute("SELECT credential_hash, box_id, site FROM boxes LIMIT ?", (limit + 1,)).fetchall()
        return None if len(rows) > limit else [(str(h), str(b), str(s)) for h, b, s in rows]

    def get_box(self, box_id: str) -> Box | None:
        with self._conn() as conn:
            row = conn.execute(f"SELECT {BOX_COLUMNS} FROM boxes WHERE box_id = ?", (box_id,)).fetchone()
        return None if row is None else box_from_row(row)

    def list_boxes(self) -> list[Box]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {BOX_COLUMNS} FROM boxes ORDER BY box_id").fetchall()
        return [box_from_row(row) for row in rows]

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
            for box_id in sorted({b.box_id for b in prepared}):  # locks in one order: no deadlock
                self._sql.lock(conn, f"box:{box_id}")
            for batch in prepared:
                conn.execute("SAVEPOINT one_batch")
                try:
                    outcomes.append(self._store_batch(conn, batch, now))
                except UnknownBox as exc:
                    conn.execute("ROLLBACK TO one_batch")
                    outcomes.append(exc)
                conn.execute("RELEASE one_batch")
        return outcomes

    def _prepare(self, box_id: str, rows: Sequence[Reading], report: SeqReport | None) -> Prepared:
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
        return Prepared(box_id, params, seq_ranges(seqs), report)

    def _store_batch(self, conn: SqlConn, batch: Prepared, now: float) -> IngestResult:
        box_id, params, ranges, report = batch
        first_seq, last_seq = (ranges[0][0], ranges[-1][1]) if ranges else (None, None)
        self._sql.lock(conn, f"box:{box_id}")  # one box's seq state is advanced by one writer at a time
        found = conn.execute(BOX_AND_SEQ, (box_id,)).fetchone()
        if found is None:
            raise UnknownBox(box_id)
        accepted = self._insert_readings(conn, params) if params else 0
        apply_results(conn, box_id, params, now)   # fleet command results in the box's audit records
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
        sql = f"SELECT {READING_COLUMNS} FROM readings WHERE box_id = ? AND seq > ?"
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
        return [reading_from_row(row) for row in rows]

    def readings_page(self, query: ReadingsQuery) -> tuple[list[BoxReading], ReadingKey | None]:
        sql = f"SELECT box_id, {READING_COLUMNS} FROM readings WHERE 1 = 1"
        args: list[Any] = []
        if query.after is not None:
            sql += " AND (ts, box_id, seq) > (?, ?, ?)"
            args += [query.after.ts, query.after.box_id, query.after.seq]
        if query.since is not None:
            sql += " AND ts >= ?"
            args.append(float(query.since))
        if query.until is not None:
            sql += " AND ts < ?"
            args.append(float(query.until))
        if query.box_id is not None:
            sql += f" AND {self._sql.filter_only('box_id')} = ?"
            args.append(query.box_id)
        for column, value in (("device", query.device), ("point", query.point),
                              ("cls", None if query.cls is None else query.cls.value)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        sql += " ORDER BY ts, box_id, seq LIMIT ?"
        args.append(query.limit + 1)
        with self._conn() as conn:
            if query.box_id is not None and conn.execute(
                    "SELECT 1 FROM boxes WHERE box_id = ?", (query.box_id,)).fetchone() is None:
                raise UnknownBox(query.box_id)
            rows = conn.execute(sql, args).fetchall()
        page = [BoxReading(row[0], reading_from_row(row[1:])) for row in rows[:query.limit]]
        return page, (page[-1].key if len(rows) > query.limit else None)


def box_from_row(row: tuple[Any, ...]) -> Box:
    box_id, hardware, site, agent_version, tags, enrolled_at, last_seen, max_seq, online, status_ts = row
    return Box(
        box_id=box_id, hardware=hardware, site=site, agent_version=agent_version,
        tags=tuple(json.loads(tags)), enrolled_at=enrolled_at, last_seen=last_seen,
        max_seq=int(max_seq), online=bool(online), status_ts=status_ts,
    )


def reading_from_row(row: tuple[Any, ...]) -> Reading:
    seq, ts, device, point, value, unit, quality, cls, text = row
    return Reading(
        device=device, point=point, value=value, unit=unit, ts=ts, quality=Quality(quality),
        cls=RecordClass(cls), text=text, seq=seq,
    )
