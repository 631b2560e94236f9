"""Alerts for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary), with their own
named migration set. Ids come from AUTOINCREMENT: they only grow and are never reused."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.alerts import Alert, AlertQuery, UnknownAlert
from fleet_server.store.sql import SqlConn

__all__ = ["ALERT_MIGRATIONS", "AlertTables"]

ALERT_MIGRATIONS = Migrations("quanedge_fleet_alerts")

_COLUMNS = "id, box_id, kind, detail, raised_at, acked_at, acked_by"


@ALERT_MIGRATIONS(name="0001_alerts")
def _alerts(db: Database) -> None:
    for sql in (
        "CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, box_id TEXT, kind TEXT NOT NULL,"
        " detail TEXT NOT NULL, raised_at REAL NOT NULL, acked_at REAL, acked_by TEXT)",
        "CREATE INDEX IF NOT EXISTS alerts_by_kind ON alerts (kind, id)",
        "CREATE INDEX IF NOT EXISTS alerts_by_box ON alerts (box_id, id)",
        "CREATE INDEX IF NOT EXISTS alerts_open ON alerts (id) WHERE acked_at IS NULL",
    ):
        db.execute(sql)


def insert_alert(conn: SqlConn, box_id: str | None, kind: str, detail: dict[str, Any],
                 now: float) -> int:
    """Insert one open alert inside the caller's transaction; return its id."""
    row = conn.execute("INSERT INTO alerts (box_id, kind, detail, raised_at) VALUES (?, ?, ?, ?) RETURNING id",
                       (box_id, kind, json.dumps(detail, separators=(",", ":")), now)).fetchall()
    return int(row[0][0])


def _alert(row: tuple[Any, ...]) -> Alert:
    alert_id, box_id, kind, detail, raised_at, acked_at, acked_by = row
    return Alert(int(alert_id), box_id, kind, json.loads(detail), float(raised_at), acked_at, acked_by)


class AlertTables:
    """`AlertStore` mixed into `SqliteStore` and `PgStore` (SQL both run, fleet_server/store/sql.py)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def raise_alert(self, box_id: str | None, kind: str, detail: dict[str, Any], now: float) -> int:
        with self._conn(write=True) as conn:
            return insert_alert(conn, box_id, kind, detail, now)

    def alerts(self, query: AlertQuery) -> list[Alert]:
        sql = f"SELECT {_COLUMNS} FROM alerts WHERE id > ?"
        args: list[object] = [query.after_id]
        if query.kind is not None:
            sql += " AND kind = ?"
            args.append(query.kind)
        if query.box_id is not None:
            sql += " AND box_id = ?"
            args.append(query.box_id)
        if query.open is not None:
            sql += " AND acked_at IS NULL" if query.open else " AND acked_at IS NOT NULL"
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, query.limit)).fetchall()
        return [_alert(row) for row in rows]

    def ack_alert(self, alert_id: int, by: str, now: float) -> Alert:
        with self._conn(write=True) as conn:
            conn.execute("UPDATE alerts SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL",
                         (now, by, alert_id))
            row = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None:
            raise UnknownAlert(alert_id)
        return _alert(row)
