"""Commands to boxes for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and
error boundary), with their own named SQLite migration set (PostgreSQL: pg_schema migration 6).

    box_commands   one row per (command, box): fleet_server.commands.BoxCommand

`apply_results` runs inside ingest's transaction (sql_boxes), so a box's result is stored
exactly when the audit reading that carries it is: neither can be lost without the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from core.fleet_command import AUDIT_POINT, OPEN, result_of_audit
from fleet_server.commands import BoxCommand, CommandQuery, UnknownCommand
from fleet_server.errors import UnknownBox
from fleet_server.store.sql import SqlConn

__all__ = ["COMMAND_MIGRATIONS", "CommandTables", "apply_results"]

COMMAND_MIGRATIONS = Migrations("quanedge_fleet_commands")

_COLUMNS = ("command_id, box_id, device, command, args, origin, created_at, deadline, state, sent_at, sends,"
            " finished_at, message")
_OPEN = "state IN ('pending', 'sent')"
assert OPEN == ("pending", "sent")


@COMMAND_MIGRATIONS(name="0001_box_commands")
def _box_commands(db: Database) -> None:
    for sql in (
        "CREATE TABLE IF NOT EXISTS box_commands (command_id TEXT PRIMARY KEY, box_id TEXT NOT NULL,"
        " device TEXT NOT NULL, command TEXT NOT NULL, args TEXT NOT NULL, origin TEXT NOT NULL,"
        " created_at REAL NOT NULL, deadline REAL NOT NULL, state TEXT NOT NULL, sent_at REAL,"
        " sends INTEGER NOT NULL DEFAULT 0, finished_at REAL, message TEXT)",
        "CREATE INDEX IF NOT EXISTS box_commands_by_box ON box_commands (box_id, created_at)",
        "CREATE INDEX IF NOT EXISTS box_commands_by_state ON box_commands (state, deadline)",
        "CREATE INDEX IF NOT EXISTS box_commands_by_time ON box_commands (created_at, command_id)",
    ):
        db.execute(sql)


def _command(row: Sequence[Any]) -> BoxCommand:
    (command_id, box_id, device, command, args, origin, created_at, deadline, state, sent_at, sends,
     finished_at, message) = row
    return BoxCommand(command_id, box_id, device, command, json.loads(args), origin, float(created_at),
                      float(deadline), state, sent_at, int(sends), finished_at, message)


def apply_results(conn: SqlConn, box_id: str, params: Sequence[Sequence[Any]], now: float) -> int:
    """Take fleet command results from a batch's rows (the `_command` audit records that carry an
    id), inside the caller's transaction; returns how many commands changed. A command of another
    box, or one already holding a box result, is left as it is (re-deliveries are harmless)."""
    changed = 0
    for p in params:
        if p[4] != AUDIT_POINT:
            continue
        found = result_of_audit(p[9])
        if found is None:
            continue
        command_id, result, message = found
        changed += conn.execute(
            "UPDATE box_commands SET state = ?, message = ?, finished_at = ? WHERE command_id = ? AND box_id = ?"
            f" AND ({_OPEN} OR (state = 'expired' AND ? <> 'expired'))",
            (result, message, now, command_id, box_id, result)).rowcount
    return changed


class CommandTables:
    """`CommandStore` mixed into `SqliteStore` and `PgStore` (SQL both run, fleet_server/store/sql.py)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def create_commands(self, commands: Sequence[BoxCommand]) -> None:
        """Store new commands (state pending) in one transaction; UnknownBox (nothing stored)
        when one names a box that is not enrolled."""
        with self._conn(write=True) as conn:
            for c in commands:
                if conn.execute("SELECT 1 FROM boxes WHERE box_id = ?", (c.box_id,)).fetchone() is None:
                    raise UnknownBox(c.box_id)
            conn.executemany(
                f"INSERT INTO box_commands ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.command_id, c.box_id, c.device, c.command, json.dumps(c.args, separators=(",", ":")),
                  c.origin, c.created_at, c.deadline, c.state, c.sent_at, c.sends, c.finished_at, c.message)
                 for c in commands])

    def get_command(self, command_id: str) -> BoxCommand:
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM box_commands WHERE command_id = ?", (command_id,)).fetchone()
        if row is None:
            raise UnknownCommand(command_id)
        return _command(row)

    def list_commands(self, query: CommandQuery) -> list[BoxCommand]:
        sql = f"SELECT {_COLUMNS} FROM box_commands WHERE 1 = 1"
        args: list[Any] = []
        if query.box_id is not None:
            sql += " AND box_id = ?"
            args.append(query.box_id)
        if query.state is not None:
            sql += " AND state = ?"
            args.append(query.state)
        if query.before is not None:
            sql += " AND (created_at < ? OR (created_at = ? AND command_id < ?))"
            args += [query.before[0], query.before[0], query.before[1]]
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY created_at DESC, command_id DESC LIMIT ?",
                                (*args, query.limit)).fetchall()
        return [_command(row) for row in rows]

    def open_commands(self, box_id: str, now: float, limit: int = 100) -> list[BoxCommand]:
        """The box's commands not yet answered and not past their deadline, oldest first."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM box_commands WHERE box_id = ? AND {_OPEN} AND deadline > ?"
                " ORDER BY created_at, command_id LIMIT ?", (box_id, now, limit)).fetchall()
        return [_command(row) for row in rows]

    def commands_to_send(self, now: float, resend_after_s: float, limit: int = 1000) -> list[BoxCommand]:
        """Open commands before their deadline never sent, or sent over `resend_after_s` ago."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM box_commands WHERE {_OPEN} AND deadline > ?"
                " AND (sent_at IS NULL OR sent_at <= ?) ORDER BY created_at, command_id LIMIT ?",
                (now, now - resend_after_s, limit)).fetchall()
        return [_command(row) for row in rows]

    def mark_sent(self, command_ids: Sequence[str], now: float) -> None:
        with self._conn(write=True) as conn:
            conn.executemany(
                f"UPDATE box_commands SET state = 'sent', sent_at = ?, sends = sends + 1 WHERE command_id = ?"
                f" AND {_OPEN}", [(now, c) for c in command_ids])

    def expire_commands(self, now: float) -> list[str]:
        """Close open commands past their deadline as expired; returns their ids."""
        with self._conn(write=True) as conn:
            rows = conn.execute(
                f"UPDATE box_commands SET state = 'expired', finished_at = ?, message = ? WHERE {_OPEN}"
                " AND deadline <= ? RETURNING command_id",
                (now, "no result from the box before the deadline", now)).fetchall()
        return [r[0] for r in rows]
