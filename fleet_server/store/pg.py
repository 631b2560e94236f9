"""The `Store` on PostgreSQL, for a city that outgrows one machine: any number of `fleet serve`
processes (replicas) on one database.

    quanedge fleet serve --db postgresql://user@dbhost:5432/fleet

The SQL is the mixins' (written once for both backends, fleet_server/store/sql.py); this module
gives them a pooled connection inside a transaction, the dialect, and the PostgreSQL-only paths
(readings through COPY, the credential generation kept in a row so every replica sees it, the
readings partitions' upkeep: `upkeep`, which the app runs as the leased job "readings-upkeep").

Correct together. Every write that decides on shared counters names its domain, and takes that
domain's transaction-scoped advisory lock (`pg_advisory_xact_lock`) before it reads them:
- "rollouts": assigning a box at check-in, closing an action (report, timeout, cancel), pausing on
  a threshold, creating a rollout. Decisions of one fleet are serialized across replicas exactly as
  SQLite serializes them in one process, so no wave passes its size and no box is assigned twice
  (the partial unique index one_open_action_per_box is the backstop). A check-in with nothing to
  do only reads and takes no lock, so the common case scales with the replicas.
- "admission": tokens (uses < max_uses), enrolment, admission, provisioning, revocation.
- "box:<id>": one box's ingest (its seq tracking is read-modify-write); batches of different boxes
  run in parallel; a group takes its boxes' locks in sorted order, so two groups never deadlock.
Why advisory locks rather than SERIALIZABLE: the mixins' transactions are written as context
blocks that cannot be re-run, and a serialization failure would need a retry loop around each;
a lock taken first never fails, and its scope (the domain) is visible in the code that takes it.
Row locks (`FOR UPDATE`) would serialize the same way but must be taken on rows that may not exist
yet (a box's first seq state), which advisory keys do not need.

Errors: every psycopg error becomes `StoreError` here, at the one boundary (`_conn`).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from fleet_server.errors import StoreError
from fleet_server.store.pg_notify import CHANNEL, CredentialListener
from fleet_server.store.pg_schema import drop_expired, ensure_partitions, migrate
from fleet_server.store.sql import POSTGRES, SqlConn
from fleet_server.store.sql_admission import AdmissionTables
from fleet_server.store.sql_alerts import AlertTables
from fleet_server.store.sql_audit import AuditTables
from fleet_server.store.sql_boxes import BoxTables
from fleet_server.store.sql_commands import CommandTables
from fleet_server.store.sql_health import HealthTables
from fleet_server.store.sql_leases import LeaseTables
from fleet_server.store.sql_quarantine import QuarantineTables
from fleet_server.store.sql_rollouts import RolloutTables
from fleet_server.store.sql_seq import SeqTables
from fleet_server.store.sql_users import UserTables

__all__ = ["PgConn", "PgStore", "redact_url"]

_COPY_FROM = 32  # batches of at least this many rows go through COPY; smaller ones through executemany
_READING_FIELDS = "box_id, seq, ts, device, point, value, unit, quality, cls, text"
_INSERT_READING = (f"INSERT INTO readings ({_READING_FIELDS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                   " ON CONFLICT DO NOTHING")


@functools.lru_cache(maxsize=4096)
def _placeholders(sql: str) -> str:
    """`?` -> `%s` (and a literal `%` -> `%%`): the mixins' SQL has no `?` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConn:
    """A psycopg connection that takes the mixins' `?` placeholders (the `SqlConn` seam)."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] | None = None, /) -> psycopg.Cursor[Any]:
        if not parameters:
            return self.raw.execute(sql)
        return self.raw.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(_placeholders(sql), parameters)
        return cursor


class PgStore(BoxTables, AdmissionTables, RolloutTables, QuarantineTables, UserTables, AuditTables, AlertTables,
              SeqTables, LeaseTables, CommandTables, HealthTables):
    """`Store` on PostgreSQL through a connection pool. `schema`: the PostgreSQL schema to use
    (search_path; tests give each run its own); `clock` is injectable for tests."""

    shared = True  # other replicas write the same database

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, schema: str | None = None,
                 min_size: int = 1, max_size: int = 8, timeout_s: float = 10.0) -> None:
        self.url = url
        self.schema = schema
        self._where = redact_url(url) + (f" (schema {schema})" if schema else "")
        self._clock = clock
        self._sql = POSTGRES
        self._closed = False
        self._close_lock = threading.Lock()
        kwargs: dict[str, Any] = {"autocommit": True}
        if schema is not None:
            kwargs["options"] = f"-c search_path={schema}"
        self._pool = ConnectionPool(url, min_size=min_size, max_size=max_size, kwargs=kwargs, open=False,
                                    timeout=timeout_s, name="quanedge-fleet")
        try:
            self._pool.open(wait=True, timeout=timeout_s)
            with self._pool.connection() as conn:
                self.migrations_applied = migrate(conn)
                ensure_partitions(conn, clock())  # the days around now; upkeep keeps them coming
            self._credentials = CredentialListener(url, kwargs)
        except StoreError:
            self._pool.close()
            raise
        except (psycopg.Error, OSError) as exc:
            self._pool.close()
            raise StoreError(f"cannot open fleet database {self._where}: {exc}") from exc

    @contextmanager
    def _conn(self, write: bool = False, lock: str | None = None) -> Iterator[SqlConn]:
        """The single boundary: a pooled connection in one transaction (committed when the block
        ends, rolled back when it raises), the domain's lock first, psycopg errors -> StoreError."""
        if self._closed:
            raise StoreError(f"fleet database {self._where} is closed")
        try:
            with self._pool.connection() as raw, raw.transaction():
                conn = PgConn(raw)
                if lock is not None:
                    self._sql.lock(conn, lock)
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"fleet database {self._where}: {exc}") from exc

    # -- what differs from SQLite ---------------------------------------------------------------

    def _insert_readings(self, conn: SqlConn, params: list[tuple[Any, ...]]) -> int:
        """Store new rows, skip re-deliveries; returns how many were new. A big batch goes through
        COPY into a session-local table, then one INSERT ... SELECT ... ON CONFLICT DO NOTHING."""
        assert isinstance(conn, PgConn)
        raw = conn.raw
        if len(params) < _COPY_FROM:
            with raw.cursor() as cursor:
                cursor.executemany(_INSERT_READING, params)
                return int(cursor.rowcount)
        raw.execute(f"CREATE TEMP TABLE IF NOT EXISTS incoming_readings AS SELECT {_READING_FIELDS}"
                    " FROM readings WITH NO DATA")
        with raw.cursor() as cursor:
            with cursor.copy(f"COPY incoming_readings ({_READING_FIELDS}) FROM STDIN") as copy:
                for row in params:
                    copy.write_row(row)
            cursor.execute(f"INSERT INTO readings ({_READING_FIELDS}) SELECT {_READING_FIELDS}"
                           " FROM incoming_readings ON CONFLICT DO NOTHING")
            stored = int(cursor.rowcount)
            cursor.execute("TRUNCATE incoming_readings")
        return stored

    def _credentials_changed(self, conn: SqlConn) -> None:
        conn.execute(f"NOTIFY {CHANNEL}")  # every replica's listener hears it at the commit

    def credential_generation(self) -> int:
        """Moves whenever any replica re-keyed, admitted or revoked (pg_notify), without a query;
        moves on every read while this replica's listener is not connected."""
        return self._credentials.generation

    # -- readings partitions ----------------------------------------------------------------------

    def upkeep(self, now: float, retention_days: Mapping[str, int], *, days_ahead: int = 7,
               days_back: int = 1) -> tuple[list[str], list[str]]:
        """The readings partitions' upkeep (`fleet_server.store.base.ReadingsUpkeep`): make the
        daily partitions from `days_back` days before `now` to `days_ahead` after it, then drop
        those past each class's retention (`pg_schema.ensure_partitions`, `drop_expired`).
        Returns (created, dropped) partition names. On a pooled connection of its own; replicas
        running it at once are serialised by the partitions' advisory lock (the "readings-upkeep"
        lease normally has one replica run it)."""
        if self._closed:
            raise StoreError(f"fleet database {self._where} is closed")
        try:
            with self._pool.connection() as conn:
                created = ensure_partitions(conn, now, days_ahead=days_ahead, days_back=days_back)
                dropped = drop_expired(conn, now, retention_days)
        except psycopg.Error as exc:  # the pool's (e.g. no connection in time); pg_schema raises StoreError
            raise StoreError(f"fleet database {self._where}: {exc}") from exc
        return created, dropped

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._credentials.close()
                self._pool.close()


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://?"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
