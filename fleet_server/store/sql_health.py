"""The boxes' latest health figures (core.box_health) for `SqliteStore` and `PgStore` (a mixin),
with their own SQLite migration set (PostgreSQL: pg_schema migration 8).

    box_health   one row per box: the last report a replica wrote (fleet_server.box_health)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from core.box_health import BoxHealthReport
from fleet_server.store.sql import SqlConn

__all__ = ["HEALTH_MIGRATIONS", "HealthTables", "StoredHealth"]

HEALTH_MIGRATIONS = Migrations("quanedge_fleet_health")
_COLUMNS = "box_id, received_at, box_clock, buffer_depth, oldest_unsent_age_s, disk_used_pct, devices_offline"

#: (box id, when the fleet received it (its clock), the report)
StoredHealth = tuple[str, float, BoxHealthReport]


@HEALTH_MIGRATIONS(name="0001_box_health")
def _box_health(db: Database) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS box_health (box_id TEXT PRIMARY KEY, received_at REAL NOT NULL,"
               " box_clock REAL NOT NULL, buffer_depth INTEGER NOT NULL, oldest_unsent_age_s REAL,"
               " disk_used_pct REAL, devices_offline TEXT NOT NULL)")


def _row(row: Sequence[Any]) -> StoredHealth:
    box_id, received_at, clock, depth, oldest, disk, offline = row
    return box_id, float(received_at), BoxHealthReport(float(clock), int(depth), oldest, disk, json.loads(offline))


class HealthTables:
    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def save_box_health(self, reports: Sequence[StoredHealth]) -> None:
        """Keep each box's report (the newest received wins over an older one written later)."""
        if not reports:
            return
        with self._conn(write=True) as conn:
            conn.executemany(
                f"INSERT INTO box_health ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (box_id) DO UPDATE SET"
                " received_at = excluded.received_at, box_clock = excluded.box_clock,"
                " buffer_depth = excluded.buffer_depth, oldest_unsent_age_s = excluded.oldest_unsent_age_s,"
                " disk_used_pct = excluded.disk_used_pct, devices_offline = excluded.devices_offline"
                " WHERE box_health.received_at <= excluded.received_at",
                [(b, at, r.clock, r.buffer_depth, r.oldest_unsent_age_s, r.disk_used_pct,
                  json.dumps(dict(r.devices_offline), separators=(",", ":"))) for b, at, r in reports])

    def box_health(self, since: float) -> list[StoredHealth]:
        """Every box's latest report received at or after `since` (fleet clock)."""
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM box_health WHERE received_at >= ? ORDER BY box_id",
                                (since,)).fetchall()
        return [_row(r) for r in rows]
