"""The append-only audit log for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary),
with its own named migration set.

Append-only is the database's rule, not only this module's: triggers abort every UPDATE and
DELETE on `audit_log` (RAISE(ABORT)), whoever issues them. Ids come from AUTOINCREMENT, so they
only grow and are never reused.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.access import AuditEntry, AuditQuery
from fleet_server.store.sql import SqlConn

__all__ = ["AUDIT_MIGRATIONS", "AuditTables"]

AUDIT_MIGRATIONS = Migrations("quanedge_fleet_audit")

_COLS = "id, ts, principal, role, method, action, target, parameters, source, status, outcome, error"


@AUDIT_MIGRATIONS(name="0001_audit_log")
def _audit_log(db: Database) -> None:
    for sql in _DDL:
        db.execute(sql)


_DDL = (
    "CREATE TABLE IF NOT EXISTS audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,"
    " principal TEXT NOT NULL, role TEXT NOT NULL, method TEXT NOT NULL, action TEXT NOT NULL,"
    " target TEXT NOT NULL, parameters TEXT NOT NULL, source TEXT NOT NULL, status INTEGER NOT NULL,"
    " outcome TEXT NOT NULL, error TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_by_principal ON audit_log (principal, id)",
    "CREATE INDEX IF NOT EXISTS audit_by_action ON audit_log (action, id)",
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit_log (ts)",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log"
    " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
)


class AuditTables:
    """`AuditStore` mixed into `SqliteStore` and `PgStore` (SQL both run, fleet_server/store/sql.py)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def record_audit(self, entry: AuditEntry) -> int:
        e = entry
        with self._conn(write=True) as conn:
            cursor = conn.execute(
                "INSERT INTO audit_log (ts, principal, role, method, action, target, parameters, source,"
                " status, outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (e.ts, e.principal, e.role, e.method, e.action, e.target, e.parameters, e.source, e.status,
                 e.outcome, e.error),
            )
            return int(cursor.fetchall()[0][0])

    def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        if not isinstance(query.limit, int) or query.limit < 1:
            raise ValueError(f"limit must be a positive integer, got {query.limit!r}")
        where, args = [], []
        for clause, value in (("principal = ?", query.principal), ("action = ?", query.action),
                              ("ts >= ?", query.since), ("ts < ?", query.until), ("id < ?", query.before)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {_COLS} FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, query.limit)).fetchall()
        return [_entry(row) for row in rows]


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    entry_id, ts, principal, role, method, action, target, parameters, source, status, outcome, error = row
    return AuditEntry(ts=ts, principal=principal, role=role, method=method, action=action, target=target,
                      parameters=parameters, source=source, status=status, outcome=outcome, error=error,
                      entry_id=entry_id)
