"""What the buffer deleted without delivering it, kept until the fleet server has been told.

A reading leaves the buffer in one of two ways: the fleet server acknowledged storing it, or the
box dropped it (evicted at the disk cap, expired by TTL, quarantined as malformed). The second
kind is recorded here as seq ranges with their reason, in the same transaction as the delete, so
the server can tell an announced drop from a reading lost on the way (a `seq_gap`).

Every telemetry message carries the box's delivery marks (`DeliveryMarks`):
    low      every seq of this buffer below `low` was either acknowledged by the fleet server or
             is announced in `dropped` (in this message or in one the server acknowledged);
    base     the first seq this buffer file ever assigned (a replaced buffer starts higher);
    dropped  pending ranges [first, last, reason], oldest first, at most `MAX_ANNOUNCED`.
A range stays pending until a message that carried it is acknowledged (`forget`). When more are
pending than one message carries, `low` stops below the first range left out, so the server never
sees a hole below `low` that the box has not announced.

The table is bounded (`MAX_PENDING` ranges): past that, the oldest ranges are merged pairwise
(first of one, last of the next, the first one's reason). A merged range may then cover readings
still in the buffer; they are delivered all the same, and the server counts a seq that is both
stored and announced as stored. Only a loss on the way of exactly those readings would go unseen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from core.seq_ranges import seq_ranges

__all__ = ["DeliveryMarks", "SCHEMA", "MAX_ANNOUNCED", "MAX_PENDING", "forget", "marks", "record", "record_selected"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS dropped (
    first  INTEGER PRIMARY KEY,
    last   INTEGER NOT NULL,
    reason TEXT    NOT NULL
);
"""
MAX_ANNOUNCED = 256
MAX_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class DeliveryMarks:
    low: int
    base: int
    dropped: tuple[tuple[int, int, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"low": self.low, "base": self.base}
        if self.dropped:
            body["dropped"] = [list(r) for r in self.dropped]
        return body


def record(db: sqlite3.Connection, seqs: Sequence[int], reason: str) -> None:
    """Record deleted, undelivered seqs (inside the caller's transaction)."""
    if seqs:
        _insert(db, seq_ranges(seqs), reason)


def record_selected(db: sqlite3.Connection, select_seqs: str, params: Sequence[object], reason: str) -> None:
    """Record the seqs that `select_seqs` (a SELECT of one column, seq) returns, as ranges computed
    by SQLite (gaps and islands), so an expiry of millions of rows holds no list of them in memory.
    Call it in the same transaction as the DELETE of the same rows, before it."""
    ranges = db.execute(
        "SELECT min(seq), max(seq) FROM (SELECT seq, seq - row_number() OVER (ORDER BY seq) AS island "
        f"FROM ({select_seqs})) GROUP BY island ORDER BY 1", params).fetchall()
    _insert(db, ranges, reason)


def _insert(db: sqlite3.Connection, ranges: Sequence[tuple[int, int]], reason: str) -> None:
    if not ranges:
        return
    db.executemany(
        "INSERT INTO dropped(first, last, reason) VALUES (?, ?, ?) "
        "ON CONFLICT(first) DO UPDATE SET last = max(last, excluded.last)",
        [(first, last, reason) for first, last in ranges])
    count = db.execute("SELECT count(*) FROM dropped").fetchone()[0]
    if count > MAX_PENDING:
        _merge_oldest(db, count - MAX_PENDING)


def _merge_oldest(db: sqlite3.Connection, excess: int) -> None:
    rows = db.execute("SELECT first, last, reason FROM dropped ORDER BY first LIMIT ?", (2 * excess,)).fetchall()
    for a, b in zip(rows[0::2], rows[1::2]):
        db.execute("DELETE FROM dropped WHERE first = ?", (b[0],))
        db.execute("UPDATE dropped SET last = ? WHERE first = ?", (max(a[1], b[1]), a[0]))


def marks(db: sqlite3.Connection, base: int, next_seq: int) -> DeliveryMarks:
    """The marks to send now. Reads the oldest buffered seq BEFORE the pending ranges: a drop that
    commits in between then shows up in the ranges (announced twice at worst), never only as a
    higher `low` (which would look like a loss)."""
    oldest = db.execute("SELECT min(seq) FROM readings").fetchone()[0]
    rows = db.execute("SELECT first, last, reason FROM dropped ORDER BY first LIMIT ?",
                      (MAX_ANNOUNCED + 1,)).fetchall()
    low = next_seq if oldest is None else oldest
    if len(rows) > MAX_ANNOUNCED:
        low = min(low, rows[MAX_ANNOUNCED][0])
        rows = rows[:MAX_ANNOUNCED]
    low = max(low, base)
    return DeliveryMarks(low=low, base=base, dropped=tuple((a, b, r) for a, b, r in rows))


def forget(db: sqlite3.Connection, ranges: Sequence[tuple[int, int, str]]) -> None:
    """The server acknowledged a message carrying these ranges: they need not be announced again."""
    db.executemany("DELETE FROM dropped WHERE first = ? AND last = ?", [(a, b) for a, b, _ in ranges])
