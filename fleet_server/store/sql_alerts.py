"""Alerts for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary), with their own
named migration set. Ids come from AUTOINCREMENT: they only grow and are never reused.

Dedup is the database's rule: the unique index `alerts_one_unresolved` on (kind, box_id or '',
subject) over unresolved rows, so two writers raising one key at once (two replicas) still make
one alert: `INSERT ... ON CONFLICT DO NOTHING`, and when nothing was inserted the unresolved row
of the key has its `raised_count` and `last_raised_at` bumped. Every state change writes its
webhook event into `alert_outbox` in the same transaction (`_outbox`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.alert_rules import AlarmPoint, BoxSeen, RuleFacts
from fleet_server.alerts import Alert, AlertKey, AlertQuery, OutboxEntry, UnknownAlert
from fleet_server.errors import StoreError
from fleet_server.store.sql import SqlConn

__all__ = ["ALERT_MIGRATIONS", "AlertTables", "insert_alert"]

ALERT_MIGRATIONS = Migrations("quanedge_fleet_alerts")

_COLUMNS = "id, box_id, kind, detail, raised_at, acked_at, acked_by, subject, raised_count, last_raised_at, resolved_at"
_KEY = "kind = ? AND COALESCE(box_id, '') = ? AND subject = ? AND resolved_at IS NULL"
_STATE_SQL = {
    "open": "acked_at IS NULL AND resolved_at IS NULL",
    "acknowledged": "acked_at IS NOT NULL AND resolved_at IS NULL",
    "resolved": "resolved_at IS NOT NULL",
}


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


#: Shared with PostgreSQL migration 6 (pg_schema), types aside.
LIFECYCLE_V2 = (
    "ALTER TABLE alerts ADD COLUMN subject {text} NOT NULL DEFAULT ''",
    "ALTER TABLE alerts ADD COLUMN raised_count {int} NOT NULL DEFAULT 1",
    "ALTER TABLE alerts ADD COLUMN last_raised_at {real}",
    "ALTER TABLE alerts ADD COLUMN resolved_at {real}",
    # Alerts from before dedup each stay their own: a subject no new alert has.
    "UPDATE alerts SET subject = '#' || id, last_raised_at = raised_at",
    "CREATE UNIQUE INDEX alerts_one_unresolved ON alerts (kind, (COALESCE(box_id, '')), subject)"
    " WHERE resolved_at IS NULL",
)


@ALERT_MIGRATIONS(name="0002_alert_lifecycle_and_outbox")
def _lifecycle(db: Database) -> None:
    for sql in LIFECYCLE_V2:
        db.execute(sql.format(text="TEXT", int="INTEGER", real="REAL"))
    db.execute("CREATE TABLE alert_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, alert_id INTEGER NOT NULL,"
               " event TEXT NOT NULL, body TEXT NOT NULL, created_at REAL NOT NULL)")


def _alert(row: Sequence[Any]) -> Alert:
    (alert_id, box_id, kind, detail, raised_at, acked_at, acked_by, subject, count, last_raised_at,
     resolved_at) = row
    return Alert(int(alert_id), box_id, kind, json.loads(detail), float(raised_at), acked_at, acked_by, subject,
                 int(count), last_raised_at, resolved_at)


def _outbox(conn: SqlConn, event: str, alert: Alert, now: float) -> None:
    body = json.dumps({"event": event, "alert": alert.to_dict()}, separators=(",", ":"))
    conn.execute("INSERT INTO alert_outbox (alert_id, event, body, created_at) VALUES (?, ?, ?, ?)",
                 (alert.id, event, body, now))


def _key_args(key: AlertKey) -> tuple[str, str, str]:
    return key.kind, key.box_id or "", key.subject


def upsert_alert(conn: SqlConn, key: AlertKey, detail: dict[str, Any], now: float) -> tuple[int, bool]:
    """Raise `key` inside the caller's transaction: (id, True) for a new alert (its "raised" event
    queued), (id, False) when the key's unresolved alert was bumped instead."""
    text = json.dumps(detail, separators=(",", ":"))
    for _ in range(3):  # a concurrent resolve between the two statements: insert again
        rows = conn.execute(
            f"INSERT INTO alerts (box_id, kind, detail, raised_at, subject, last_raised_at) VALUES (?, ?, ?, ?, ?, ?)"
            f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
            (key.box_id, key.kind, text, now, key.subject, now)).fetchall()
        if rows:
            alert = _alert(rows[0])
            _outbox(conn, "raised", alert, now)
            return alert.id, True
        rows = conn.execute(
            f"UPDATE alerts SET raised_count = raised_count + 1, last_raised_at = ?, detail = ? WHERE {_KEY}"
            " RETURNING id", (now, text, *_key_args(key))).fetchall()
        if rows:
            return int(rows[0][0]), False
    raise StoreError(f"cannot raise alert {key}: its row keeps changing")


def insert_alert(conn: SqlConn, box_id: str | None, kind: str, detail: dict[str, Any], now: float,
                 subject: str = "") -> int:
    """Raise one alert inside the caller's transaction (deduplicated by key); return its id."""
    return upsert_alert(conn, AlertKey(kind, box_id, subject), detail, now)[0]


def resolve_in(conn: SqlConn, key: AlertKey, now: float) -> Alert | None:
    """Resolve the key's unresolved alert inside the caller's transaction (its event queued)."""
    rows = conn.execute(f"UPDATE alerts SET resolved_at = ? WHERE {_KEY} RETURNING {_COLUMNS}",
                        (now, *_key_args(key))).fetchall()
    if not rows:
        return None
    alert = _alert(rows[0])
    _outbox(conn, "resolved", alert, now)
    return alert


class AlertTables:
    """`AlertStore` mixed into `SqliteStore` and `PgStore` (SQL both run, fleet_server/store/sql.py)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def raise_alert(self, box_id: str | None, kind: str, detail: dict[str, Any], now: float,
                    subject: str = "") -> int:
        with self._conn(write=True) as conn:
            return insert_alert(conn, box_id, kind, detail, now, subject)

    def resolve_alert(self, key: AlertKey, now: float) -> Alert | None:
        with self._conn(write=True) as conn:
            return resolve_in(conn, key, now)

    def apply_alert_changes(self, raise_: Iterable[tuple[AlertKey, dict[str, Any]]], resolve: Iterable[AlertKey],
                            now: float) -> tuple[int, int]:
        with self._conn(write=True) as conn:
            raised = sum(upsert_alert(conn, key, detail, now)[1] for key, detail in raise_)
            resolved = sum(resolve_in(conn, key, now) is not None for key in resolve)
        return raised, resolved

    def unresolved_alerts(self, kinds: Sequence[str]) -> list[Alert]:
        if not kinds:
            return []
        marks = ", ".join("?" * len(kinds))
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE resolved_at IS NULL AND kind IN ({marks})"
                                " ORDER BY id", tuple(kinds)).fetchall()
        return [_alert(row) for row in rows]

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
            sql += f" AND ({_STATE_SQL['open']})" if query.open else f" AND NOT ({_STATE_SQL['open']})"
        if query.state is not None:
            sql += f" AND {_STATE_SQL[query.state]}"
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, query.limit)).fetchall()
        return [_alert(row) for row in rows]

    def ack_alert(self, alert_id: int, by: str, now: float) -> Alert:
        with self._conn(write=True) as conn:
            rows = conn.execute(f"UPDATE alerts SET acked_at = ?, acked_by = ? WHERE id = ? AND acked_at IS NULL"
                                f" AND resolved_at IS NULL RETURNING {_COLUMNS}", (now, by, alert_id)).fetchall()
            if rows:
                alert = _alert(rows[0])
                _outbox(conn, "acknowledged", alert, now)
                return alert
            row = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        if row is None:
            raise UnknownAlert(alert_id)
        return _alert(row)

    # -- the webhook outbox ----------------------------------------------------------------------

    def alert_outbox(self, limit: int) -> list[OutboxEntry]:
        with self._conn() as conn:
            rows = conn.execute("SELECT id, alert_id, event, body, created_at FROM alert_outbox ORDER BY id LIMIT ?",
                                (limit,)).fetchall()
        return [OutboxEntry(int(i), int(a), e, b, float(c)) for i, a, e, b, c in rows]

    def delete_alert_outbox(self, entry_id: int) -> None:
        with self._conn(write=True) as conn:
            conn.execute("DELETE FROM alert_outbox WHERE id = ?", (entry_id,))

    def trim_alert_outbox(self, keep: int) -> int:
        with self._conn(write=True) as conn:
            row = conn.execute("SELECT id FROM alert_outbox ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)).fetchone()
            if row is None:
                return 0
            return max(int(conn.execute("DELETE FROM alert_outbox WHERE id <= ?", (row[0],)).rowcount), 0)

    def alert_outbox_depth(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT count(*) FROM alert_outbox").fetchone()[0])

    # -- facts for the rules (fleet_server.alert_rules) ------------------------------------------

    def alert_rule_facts(self, alarms_since: float, max_points: int = 10_000) -> RuleFacts:
        """The boxes' last_seen (revoked boxes left out), and each (box, device, point) with an
        ALARM reading at or after `alarms_since` (reading time): its latest alarm, and whether a
        later reading of another class was stored. The alarm scan is bounded by time on the index
        `readings_by_time` (PostgreSQL also prunes to the alarm partitions of those days); the
        later-reading check is one probe of `readings_by_point` per alarmed point."""
        with self._conn() as conn:
            boxes = [BoxSeen(b, float(e), None if s is None else float(s)) for b, e, s in conn.execute(
                "SELECT b.box_id, b.enrolled_at, b.last_seen FROM boxes b"
                " LEFT JOIN box_revocations v ON v.box_id = b.box_id WHERE v.box_id IS NULL").fetchall()]
            latest = conn.execute(
                "SELECT box_id, device, point, max(seq) FROM readings WHERE ts >= ? AND cls = 'alarm'"
                " GROUP BY box_id, device, point ORDER BY box_id, device, point LIMIT ?",
                (alarms_since, max_points)).fetchall()
            points = []
            for box_id, device, point, seq in latest:
                ts, text = conn.execute("SELECT ts, text FROM readings WHERE box_id = ? AND seq = ? AND cls = 'alarm'",
                                        (box_id, seq)).fetchone()
                later = conn.execute(
                    "SELECT 1 FROM readings WHERE box_id = ? AND device = ? AND point = ? AND seq > ?"
                    " AND cls <> 'alarm' LIMIT 1", (box_id, device, point, seq)).fetchone()
                points.append(AlarmPoint(box_id, device, point, float(ts), int(seq), text, later is not None))
        return RuleFacts(boxes=tuple(boxes), alarms=tuple(points))
