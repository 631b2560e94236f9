"""The embedded default `Store`: one SQLite file through sqlite-utils.

One connection, guarded by a lock (the API calls in from threadpool threads), WAL journal with
synchronous=FULL: a batch the server has acknowledged is on disk, because the box deletes it from
its own buffer on that acknowledgement. sqlite3 errors become `StoreError` here and nowhere else.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from fleet_server.errors import StoreError
from fleet_server.store.sql import SQLITE, SqlConn
from fleet_server.store.sql_admission import ADMISSION_MIGRATIONS, AdmissionTables
from fleet_server.store.sql_alerts import ALERT_MIGRATIONS, AlertTables
from fleet_server.store.sql_audit import AUDIT_MIGRATIONS, AuditTables
from fleet_server.store.sql_boxes import BoxTables
from fleet_server.store.sql_commands import COMMAND_MIGRATIONS, CommandTables
from fleet_server.store.sql_health import HEALTH_MIGRATIONS, HealthTables
from fleet_server.store.sql_leases import LEASE_MIGRATIONS, LeaseTables
from fleet_server.store.sql_quarantine import QUARANTINE_MIGRATIONS, QuarantineTables
from fleet_server.store.sql_rollouts import RolloutTables
from fleet_server.store.sql_seq import SEQ_MIGRATIONS, SeqTables
from fleet_server.store.sql_users import USER_MIGRATIONS, UserTables
from fleet_server.store.sqlite_schema import apply_migrations, migrate, migrate_rollouts

__all__ = ["SqliteStore"]

# Only the (box_id, seq) key conflict is a duplicate; unlike INSERT OR IGNORE, this does not also
# swallow NOT NULL violations (which would then be miscounted as duplicates).
_INSERT_READING = (
    "INSERT INTO readings (box_id, seq, ts, device, point, value, unit, quality, cls, text)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (box_id, seq) DO NOTHING"
)


class SqliteStore(BoxTables, AdmissionTables, RolloutTables, QuarantineTables, UserTables, AuditTables, AlertTables,
                  SeqTables, LeaseTables, CommandTables, HealthTables):
    """`Store` backed by one SQLite file. `clock` (unix seconds) is injectable for tests.

    Enrolment and admission (tokens, re-key, pending requests, revocation) live in the
    `AdmissionTables` mixin; rollout storage (inventory, sites, rollouts, actions) in
    `RolloutTables`; the quarantine of unprocessable messages in `QuarantineTables`; API users in
    `UserTables`; the append-only audit log in `AuditTables`; alerts in `AlertTables`; seq
    tracking's tables in `SeqTables` (its per-batch step runs inside `ingest`); the leases of the
    periodic jobs in `LeaseTables` (one server per SQLite file: it always gets them); commands to
    boxes in `CommandTables`.

    Readings are kept for good: the retention settings (`retention_days_*`) apply to PostgreSQL's
    daily partitions only (`PgStore.upkeep`); this store has no `upkeep` and drops nothing.
    """

    shared = False  # one process owns the file: what it remembers stays true

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open fleet database {self.path!r}: {exc}") from exc
        try:
            self._db = Database(conn, execute_plugins=False)
            if self.path != ":memory:":
                self._db.enable_wal()
            conn.execute("PRAGMA synchronous=FULL")
            self.migrations_applied = migrate(self._db)
            self.rollout_migrations_applied = migrate_rollouts(self._db)
            self.quarantine_migrations_applied = apply_migrations(QUARANTINE_MIGRATIONS, self._db)
            self.user_migrations_applied = apply_migrations(USER_MIGRATIONS, self._db)
            self.audit_migrations_applied = apply_migrations(AUDIT_MIGRATIONS, self._db)
            self.admission_migrations_applied = apply_migrations(ADMISSION_MIGRATIONS, self._db)
            self.alert_migrations_applied = apply_migrations(ALERT_MIGRATIONS, self._db)
            self.seq_migrations_applied = apply_migrations(SEQ_MIGRATIONS, self._db)
            self.lease_migrations_applied = apply_migrations(LEASE_MIGRATIONS, self._db)
            self.command_migrations_applied = apply_migrations(COMMAND_MIGRATIONS, self._db)
            self.health_migrations_applied = apply_migrations(HEALTH_MIGRATIONS, self._db)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot prepare fleet database {self.path!r}: {exc}") from exc
        self._closed = False
        self._credential_generation = 0
        self._sql = SQLITE

    @contextmanager
    def _conn(self, write: bool = False, lock: str | None = None) -> Iterator[sqlite3.Connection]:
        """The single boundary: lock, optional transaction, sqlite3 errors -> StoreError.

        `lock` names the domain a write decides on (fleet_server.store.sql): one SQLite process
        holds the one lock for every write already, so it needs nothing more here."""
        with self._lock:
            if self._closed:
                raise StoreError(f"fleet database {self.path!r} is closed")
            try:
                if write:
                    with self._db.atomic():
                        yield self._db.conn
                else:
                    yield self._db.conn
            except sqlite3.Error as exc:
                raise StoreError(f"fleet database {self.path!r}: {exc}") from exc

    def _credentials_changed(self, conn: SqlConn) -> None:
        self._credential_generation += 1  # one process: memory is enough (PostgreSQL keeps it in a row)

    def credential_generation(self) -> int:
        """Changes whenever an existing credential stops working (see `Store`)."""
        return self._credential_generation

    def _insert_readings(self, conn: SqlConn, params: list[tuple[Any, ...]]) -> int:
        return int(conn.executemany(_INSERT_READING, params).rowcount)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


