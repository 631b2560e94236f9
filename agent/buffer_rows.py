"""Row-level recovery for the durable buffer's writer thread (agent.buffer): the two operations
that deal with single rows rather than groups.

    insert_rowwise(db, insert_sql, appends, next_seq) -> ([(first, last, refused)], next_seq, stored)
        after a group commit failed on its data: one transaction, one SAVEPOINT per row, so only
        the rows SQLite refuses are refused (with their reason) and the rest commit together;
    quarantine(db, items, now) -> rows moved
        rows the uplink refused as malformed move from `readings` to `quarantine` (raw row as JSON,
        reason, time) in one transaction.

Both run on the writer's connection (the only writer) and raise sqlite3 errors, which the buffer
maps to StorageError at its one boundary.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Sequence

from agent import buffer_drops

__all__ = ["DataError", "QUARANTINE_SCHEMA", "insert_rowwise", "quarantine"]

log = logging.getLogger("agent.buffer")

QUARANTINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    seq     INTEGER,
    row     TEXT NOT NULL,
    reason  TEXT NOT NULL,
    ts      REAL NOT NULL
);
"""


class DataError(Exception):
    """A group commit failed on its data (not on the disk): retry it row by row."""


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def insert_rowwise(db: sqlite3.Connection, insert_sql: str, appends: Sequence[Sequence[tuple]],
                   next_seq: int) -> tuple[list[tuple[int, int, tuple[tuple[int, str], ...]]], int, int]:
    """Per append: (first seq, last seq, refused (index, reason) pairs); first == 0 when all refused.

    A disk-level error (sqlite3.OperationalError) fails the whole group: it is not the row's fault."""
    seq = next_seq
    outcomes: list[tuple[int, int, tuple[tuple[int, str], ...]]] = []
    stored = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for rows in appends:
            first = last = 0
            refused: list[tuple[int, str]] = []
            for i, r in enumerate(rows):
                db.execute("SAVEPOINT one_row")
                try:
                    db.execute(insert_sql, (seq, *r))
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:  # this row's data: refuse it alone
                    db.execute("ROLLBACK TO one_row")
                    refused.append((i, f"{type(exc).__name__}: {str(exc)[:200]}"))
                else:
                    first, last = first or seq, seq
                    seq += 1
                    stored += 1
                db.execute("RELEASE one_row")
            for i, why in refused:
                log.error("buffer refused reading %d of an append: %s", i, why)
            outcomes.append((first, last, tuple(refused)))
        db.execute("INSERT INTO meta(key, value) VALUES('next_seq', ?) "
                   "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (seq,))
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    return outcomes, seq, stored


def quarantine(db: sqlite3.Connection, items: Sequence[tuple[int | None, str, str]], now: float) -> int:
    """Insert each (seq, row JSON, reason) into `quarantine` and delete its row from `readings`."""
    moved = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for seq, row, reason in items:
            db.execute("INSERT INTO quarantine(seq, row, reason, ts) VALUES(?,?,?,?)", (seq, row, reason, now))
            if seq is not None:
                moved += max(db.execute("DELETE FROM readings WHERE seq = ?", (seq,)).rowcount, 0)
        buffer_drops.record(db, [seq for seq, _, _ in items if seq is not None], "quarantined")
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise
    log.error("quarantined %d row(s) the uplink refused as malformed: %s", len(items),
              "; ".join(f"seq {s}: {r}" for s, _, r in items[:3]))
    return moved
