"""Seq tracking for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary), with its own
named migration set.

    box_seq      one row per box: its `SeqState` (above as JSON [[first, last], ...])
    seq_gaps     every gap found, with the id of the `seq_gap` alert raised for it
    seq_dropped  every dropped range a box announced, once per (box, first, last): a re-announcement
                 inserts nothing, so it is not counted twice

`track_batch` runs inside `SqliteStore.ingest`'s transaction: the state row was read with the
box's existence check (one SELECT), the pure rules run, and a normal batch costs ONE more write
(the state row; none when the state did not change, e.g. a re-delivered batch).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.alerts import SEQ_GAP
from fleet_server.errors import UnknownBox
from fleet_server.seq_tracking import SEQ_MAX, Range, SeqReport, SeqState, Tracked, check_reason, track
from fleet_server.store.seq import SeqStatus
from fleet_server.store.sql import SqlConn
from fleet_server.store.sql_alerts import insert_alert

__all__ = ["BOX_AND_SEQ", "SEQ_MIGRATIONS", "SeqTables", "check_report", "seq_state", "track_batch"]

SEQ_MIGRATIONS = Migrations("quanedge_fleet_seq")


@SEQ_MIGRATIONS(name="0001_seq_tracking")
def _seq_tracking(db: Database) -> None:
    for sql in (
        "CREATE TABLE IF NOT EXISTS box_seq (box_id TEXT PRIMARY KEY, contig INTEGER, above TEXT NOT NULL,"
        " base INTEGER, fresh INTEGER NOT NULL, updated_at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS seq_gaps (id INTEGER PRIMARY KEY AUTOINCREMENT, box_id TEXT NOT NULL,"
        " first INTEGER NOT NULL, last INTEGER NOT NULL, missing INTEGER NOT NULL, reason TEXT NOT NULL,"
        " detected_at REAL NOT NULL, alert_id INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS seq_gaps_by_box ON seq_gaps (box_id, id)",
        "CREATE TABLE IF NOT EXISTS seq_dropped (box_id TEXT NOT NULL, first INTEGER NOT NULL,"
        " last INTEGER NOT NULL, reason TEXT NOT NULL, seqs INTEGER NOT NULL, announced_at REAL NOT NULL,"
        " PRIMARY KEY (box_id, first, last)) WITHOUT ROWID",
    ):
        db.execute(sql)


#: The box's existence check, its max_seq and its seq state in one read (the row may be absent).
BOX_AND_SEQ = ("SELECT b.max_seq, s.contig, s.above, s.base, s.fresh FROM boxes b"
               " LEFT JOIN box_seq s ON s.box_id = b.box_id WHERE b.box_id = ?")
_UPSERT = ("INSERT INTO box_seq (box_id, contig, above, base, fresh, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
           " ON CONFLICT (box_id) DO UPDATE SET contig = excluded.contig, above = excluded.above,"
           " base = excluded.base, updated_at = excluded.updated_at")
_INSERT_DROPPED = ("INSERT INTO seq_dropped (box_id, first, last, reason, seqs, announced_at)"
                   " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (box_id, first, last) DO NOTHING")


def check_report(report: SeqReport) -> None:
    """The store's own guard (the boundary is `ingest.parse_telemetry`): ValueError if malformed."""
    for name, value in (("low", report.low), ("base", report.base)):
        if value is not None and not (type(value) is int and 1 <= value <= SEQ_MAX):
            raise ValueError(f"{name} must be an integer in 1..2**63-1, got {value!r:.40}")
    if report.low is not None and report.base is not None and report.low < report.base:
        raise ValueError("low must not be below base")
    for first, last, reason in report.dropped:
        if not (type(first) is int and type(last) is int and 1 <= first <= last <= SEQ_MAX and check_reason(reason)):
            raise ValueError(f"malformed dropped range {(first, last, reason)!r:.80}")


def seq_state(row: Sequence[Any], max_seq: int) -> SeqState:
    """The state from (contig, above, base, fresh) of box_seq; a box without a row yet is `fresh`
    when nothing was ever stored for it (max_seq 0): its whole history goes through tracking."""
    contig, above, base, fresh = row
    if above is None:
        return SeqState(fresh=max_seq == 0)
    return SeqState(contig, tuple((int(a), int(b)) for a, b in json.loads(above)), base, bool(fresh))


def track_batch(conn: SqlConn, box_id: str, state: SeqState, ranges: Sequence[Range],
                report: SeqReport | None, now: float) -> tuple[Tracked, tuple[tuple[str, int], ...]]:
    """Advance and persist the box's seq state inside the caller's transaction; store each gap with
    its alert and the newly announced dropped ranges. Returns the outcome and (reason, seqs) of the
    dropped ranges announced for the first time."""
    tracked = track(state, ranges, report)
    new = tracked.state
    if new != state:   # (a box without a row yet has one once anything is covered, keeping `fresh`)
        conn.execute(_UPSERT, (box_id, new.contig, json.dumps(new.above, separators=(",", ":")), new.base,
                               int(new.fresh), now))
    for gap in tracked.gaps:
        detail = {"first": gap.first, "last": gap.last, "missing": gap.missing, "reason": gap.reason}
        alert_id = insert_alert(conn, box_id, SEQ_GAP, detail, now, f"{gap.first}..{gap.last}")
        conn.execute("INSERT INTO seq_gaps (box_id, first, last, missing, reason, detected_at, alert_id)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", (box_id, gap.first, gap.last, gap.missing, gap.reason,
                                                         now, alert_id))
    announced: Counter[str] = Counter()
    for first, last, reason in report.dropped if report is not None else ():
        seqs = last - first + 1
        if conn.execute(_INSERT_DROPPED, (box_id, first, last, reason, seqs, now)).rowcount:
            announced[reason] += seqs
    return tracked, tuple(announced.items())


class SeqTables:
    """`SeqStore` for SQLite; mixed into `SqliteStore` (which calls `track_batch` from `ingest`)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def seq_status(self, box_id: str) -> SeqStatus:
        with self._conn() as conn:
            row = conn.execute(BOX_AND_SEQ.replace("s.fresh", "s.fresh, s.updated_at"), (box_id,)).fetchone()
            if row is None:
                raise UnknownBox(box_id)
            gaps = conn.execute("SELECT reason, count(*), coalesce(sum(missing), 0) FROM seq_gaps WHERE box_id = ?"
                                " GROUP BY reason", (box_id,)).fetchall()
            dropped = conn.execute("SELECT reason, count(*), coalesce(sum(seqs), 0) FROM seq_dropped WHERE box_id = ?"
                                   " GROUP BY reason", (box_id,)).fetchall()
        state = seq_state(row[1:5], int(row[0]))
        return SeqStatus(
            box_id=box_id, contig=state.contig, base=state.base, fresh=state.fresh, above=state.above,
            gaps=sum(int(n) for _, n, _ in gaps), gap_readings=int(sum(m for _, _, m in gaps)),
            gaps_by_reason={reason: int(m) for reason, _, m in gaps},
            dropped_ranges=sum(int(n) for _, n, _ in dropped), dropped_readings=int(sum(s for _, _, s in dropped)),
            dropped_by_reason={reason: int(s) for reason, _, s in dropped},
            updated_at=row[5],
        )
