"""Quarantine storage for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary), with
its own named migration set so the core and rollout sets stay as they are."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.store.quarantine import DETAIL_MAX, KEEP_MAX, PAYLOAD_MAX, TOPIC_MAX, QuarantinedMessage, clean
from fleet_server.store.sql import SqlConn

__all__ = ["QUARANTINE_MIGRATIONS", "QuarantineTables"]

QUARANTINE_MIGRATIONS = Migrations("quanedge_fleet_quarantine")


@QUARANTINE_MIGRATIONS(name="0001_quarantine")
def _quarantine(db: Database) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " received_at REAL NOT NULL, transport TEXT NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,"
        " detail TEXT NOT NULL, size INTEGER NOT NULL, payload BLOB NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS quarantine_by_reason ON quarantine (reason, id)")


_COLUMNS = "id, received_at, transport, topic, reason, detail, size, payload"


class QuarantineTables:
    """`QuarantineStore` mixed into `SqliteStore` and `PgStore` (SQL both run, fleet_server/store/sql.py)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def quarantine(self, transport: str, topic: str, payload: bytes, reason: str, detail: str,
                   now: float) -> int:
        row = (now, clean(transport, 16), clean(topic, TOPIC_MAX), clean(reason, 64), clean(detail, DETAIL_MAX),
               len(payload), bytes(payload[:PAYLOAD_MAX]))
        with self._conn(write=True) as conn:
            cursor = conn.execute(
                "INSERT INTO quarantine (received_at, transport, topic, reason, detail, size, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id", row)
            new_id = int(cursor.fetchall()[0][0])
            conn.execute("DELETE FROM quarantine WHERE id <= ?", (new_id - KEEP_MAX,))
        return new_id

    def quarantined(self, after_id: int = 0, limit: int = 100, reason: str | None = None) -> list[QuarantinedMessage]:
        sql = f"SELECT {_COLUMNS} FROM quarantine WHERE id > ?"
        args: list[object] = [after_id]
        if reason is not None:
            sql += " AND reason = ?"
            args.append(reason)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [QuarantinedMessage(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], int(r[6]), bytes(r[7]))
                for r in rows]

    def count_quarantined(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0])
