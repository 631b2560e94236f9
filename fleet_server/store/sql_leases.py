"""Leases for `SqliteStore` and `PgStore` (a mixin: the store's connection and error boundary), with
their own named migration set (PostgreSQL: migration 3 in pg_schema).

    leases   one row per lease name: who holds it, until when, since when

Acquiring is ONE statement on both backends, an upsert whose update only happens when the row
may be taken (`fleet_server.store.leases` has the contract):

    INSERT ... ON CONFLICT (name) DO UPDATE SET ...
        WHERE leases.holder = excluded.holder OR leases.expires_at <= now  RETURNING ...

It returns the row when it inserted or updated it, nothing when the WHERE refused the update.
Why no domain lock (`_conn(lock=...)`) is needed: the decision and the write are the same
statement. SQLite runs one writer at a time (and the store's lock around it). PostgreSQL makes
`INSERT ... ON CONFLICT DO UPDATE` atomic by itself: of two sessions inserting the same new name,
the second waits on the first's index entry and, once that commits, takes the conflict path; the
conflicting row is locked and the WHERE is evaluated against its latest committed version (also
in READ COMMITTED), so a holder that just took the lease is seen and the second caller gets no
row. Two callers can therefore never both be told they hold a lease.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.store.leases import Lease, check_lease_args
from fleet_server.store.sql import SqlConn

__all__ = ["LEASE_MIGRATIONS", "LeaseTables"]

LEASE_MIGRATIONS = Migrations("quanedge_fleet_leases")


@LEASE_MIGRATIONS(name="0001_leases")
def _leases(db: Database) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL,"
                " expires_at REAL NOT NULL, acquired_at REAL NOT NULL)")


_COLUMNS = "name, holder, expires_at, acquired_at"

# Parameters: name, holder, expires_at, now (acquired_at), now (tenure still valid?), now (expired?).
_ACQUIRE = (
    f"INSERT INTO leases ({_COLUMNS}) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,"
    " acquired_at = CASE WHEN leases.holder = excluded.holder AND leases.expires_at > ?"
    " THEN leases.acquired_at ELSE excluded.acquired_at END"
    " WHERE leases.holder = excluded.holder OR leases.expires_at <= ?"
    f" RETURNING {_COLUMNS}"
)


def _lease(row: Any) -> Lease:
    name, holder, expires_at, acquired_at = row
    return Lease(str(name), str(holder), float(expires_at), float(acquired_at))


class LeaseTables:
    """`LeaseStore` mixed into `SqliteStore` and `PgStore` (SQL both run, fleet_server/store/sql.py)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]

    def acquire_lease(self, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        check_lease_args(name, holder, ttl_s, now)
        now = float(now)
        with self._conn(write=True) as conn:  # no domain lock: one atomic statement (module doc)
            rows = conn.execute(_ACQUIRE, (name, holder, now + float(ttl_s), now, now, now)).fetchall()
        return _lease(rows[0]) if rows else None

    def release_lease(self, name: str, holder: str) -> bool:
        check_lease_args(name, holder)
        with self._conn(write=True) as conn:
            rows = conn.execute("DELETE FROM leases WHERE name = ? AND holder = ? RETURNING name",
                                (name, holder)).fetchall()
        return bool(rows)

    def leases(self) -> list[Lease]:
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM leases ORDER BY name").fetchall()
        return [_lease(row) for row in rows]
