"""The PostgreSQL schema of the fleet server: versioned migrations and the readings partitions.

The tables, columns, indexes and constraints are those the SQLite migrations create (same names,
same column order, so the mixins' SQL runs unchanged on both), with PostgreSQL types: REAL ->
double precision (timestamps stay unix seconds), INTEGER -> bigint (flags stay 0/1: the shared SQL
compares `open = 1`), TEXT -> text, BLOB -> bytea, `INTEGER PRIMARY KEY AUTOINCREMENT` -> an
identity column (ids only grow and are never reused, as with AUTOINCREMENT); WITHOUT ROWID has no
equivalent and is dropped. Nothing names a schema: every object is created in, and looked up
through, the connection's `search_path`, so one database can hold several fleets (and each test
its own schema).

Migrations
    `MIGRATIONS` is an ordered list of `Migration(version, name, statements)`; `migrate(conn)`
    applies the ones the database lacks, each in its own transaction together with its row in
    `schema_migrations`, under a transaction-scoped advisory lock (`MIGRATE_LOCK`), so replicas
    starting together never both apply one: the second waits, re-reads `schema_migrations` and
    finds nothing to do. A database at a version above the code's (`SCHEMA_VERSION`) is refused
    with `StoreError` before anything is changed. Never edit an applied migration: append one
    (a statement is SQL text, or a callable taking the connection for data migrations).
    Migration 1 is the whole current schema; migration 4 adds the read-only views (`VIEWS`) for
    systems that read the database directly (docs/data-out.md). Daily partitions are not migrations (they depend on
    the date): the store calls `ensure_partitions` at start and then periodically.

Readings: partitioned by class, then by day
    readings                    PARTITION BY LIST (cls)
    ├── readings_routine        FOR VALUES IN ('routine')  PARTITION BY RANGE (ts)
    │   ├── readings_routine_20261207   one UTC day [00:00, 24:00) of ts, made by ensure_partitions
    │   ├── ...
    │   └── readings_routine_default    DEFAULT: any ts no daily partition covers
    ├── readings_event          (the same)
    └── readings_alarm          (the same)

    Retention drops whole daily partitions (`drop_expired`: DETACH + DROP, no row DELETE), and
    each class keeps its own retention. There is no DEFAULT partition at the class level: `cls`
    is a `RecordClass` value (checked before any insert), and a new class needs its partitions
    in a new migration anyway (a test keeps `CLASSES` equal to `RecordClass`).

    Dedup key. PostgreSQL requires a unique constraint on a partitioned table to contain every
    partition key column, so the SQLite key (box_id, seq) cannot be unique across partitions. The
    primary key is (box_id, seq, cls, ts): a re-delivered reading is the same stored row (the box
    resends it from its buffer with the same seq, cls and ts), so it routes to the same partition
    and conflicts there, and `INSERT ... ON CONFLICT DO NOTHING` counts it as a duplicate. The
    difference from SQLite: two readings with the same (box_id, seq) but a different cls or ts
    are both kept here where SQLite keeps the first; a box never reuses a seq for another
    reading, so this only shows with a misbehaving box. The conflict target differs too: use
    `ON CONFLICT DO NOTHING` (no target; it is still limited to unique violations, on both
    engines) in shared SQL, since `ON CONFLICT (box_id, seq)` has no matching index here.

    Indexes (created on the parent, so every partition gets them): the primary key serves
    `WHERE box_id = ? AND seq > ? ORDER BY seq` (a merge of each partition's index scan);
    `readings_by_point` (box_id, device, point, seq) the device/point filters, as in SQLite;
    `readings_by_time` (ts, box_id, seq) time-paged reads across boxes (keyset on ts, ties broken
    by box_id, seq), and those also prune partitions. Seq-paged reads cannot prune by day: they
    probe every partition of the classes they read.

    The DEFAULT partitions. A row whose ts no daily partition covers (a box with a wrong clock, a
    reading older than the partitions kept, or newer than those made ahead) lands in its class's
    DEFAULT partition, so no insert is ever refused for its time. PostgreSQL refuses to add a
    partition whose range holds rows of the DEFAULT partition; `ensure_partitions` therefore
    makes each new day as a plain table, moves the DEFAULT partition's rows of that day into it
    and attaches it, in one transaction (the DEFAULT partition is locked meanwhile, so no row of
    that day can land there in between; an ingest transaction holding such a row makes it wait,
    and the row is moved too). One rare clash is left to PostgreSQL: an ingest transaction with
    rows in the DEFAULT partitions of two classes, while the upkeep makes days for both, can
    deadlock with it; PostgreSQL aborts one of the two (a StoreError; the box resends, the upkeep
    runs again). Rows stay in a DEFAULT partition otherwise: retention never touches it (it has
    no day to expire), so rows for days older than every kept partition
    stay until an operator removes them (`SELECT count(*) FROM readings_routine_default` shows
    them; they remain readable through `readings`).

Backend errors become `StoreError` here (this module is part of the store's boundary); a
connection handed to these functions must be idle (not inside a transaction): each function
runs its own transactions.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from fleet_server.errors import StoreError
from fleet_server.store.sql_alerts import LIFECYCLE_V2

__all__ = [
    "CLASSES", "DAY_S", "MIGRATE_LOCK", "MIGRATIONS", "PARTITION_LOCK", "SCHEMA_VERSION", "VIEWS", "Migration",
    "drop_expired", "ensure_partitions", "migrate", "partition_name",
]

log = logging.getLogger(__name__)

Connection = psycopg.Connection[Any]
#: One step of a migration: SQL text (no parameters), or a callable run with the connection.
Statement = str | Callable[[Connection], None]

#: Keys of the transaction-scoped advisory locks (fixed, arbitrary; one per kind of upkeep).
MIGRATE_LOCK = 0x71756E65_6D696772  # "quanemigr"
PARTITION_LOCK = 0x71756E65_70617274  # "quanepart"

DAY_S = 86400
#: The reading classes, each a LIST partition of readings (`core.reading.RecordClass` values).
CLASSES = ("routine", "event", "alarm")


class Migration(NamedTuple):
    version: int
    name: str
    statements: Sequence[Statement]


_READINGS_V1: list[Statement] = [
    "CREATE TABLE readings (box_id text NOT NULL, seq bigint NOT NULL, ts double precision NOT NULL,"
    " device text NOT NULL, point text NOT NULL, value double precision, unit text NOT NULL,"
    " quality bigint NOT NULL, cls text NOT NULL, text text,"
    " CONSTRAINT readings_pkey PRIMARY KEY (box_id, seq, cls, ts)) PARTITION BY LIST (cls)",
    "CREATE INDEX readings_by_point ON readings (box_id, device, point, seq)",
    "CREATE INDEX readings_by_time ON readings (ts, box_id, seq)",
]
for _cls in ("routine", "event", "alarm"):  # frozen here: a new class is a new migration
    _READINGS_V1 += [
        f"CREATE TABLE readings_{_cls} PARTITION OF readings FOR VALUES IN ('{_cls}') PARTITION BY RANGE (ts)",
        f"CREATE TABLE readings_{_cls}_default PARTITION OF readings_{_cls} DEFAULT",
    ]

_SCHEMA_V1: list[Statement] = [
    # -- core (sqlite_schema MIGRATIONS) ---------------------------------------------------------
    "CREATE TABLE enrollment_tokens (token_hash text PRIMARY KEY, created_at double precision NOT NULL,"
    " expires_at double precision NOT NULL, max_uses bigint NOT NULL, uses bigint NOT NULL DEFAULT 0,"
    " note text NOT NULL DEFAULT '')",
    "CREATE TABLE boxes (box_id text PRIMARY KEY, hardware text NOT NULL, site text NOT NULL,"
    " agent_version text NOT NULL, tags text NOT NULL DEFAULT '[]', credential_hash text NOT NULL,"
    " enrolled_at double precision NOT NULL, last_seen double precision, max_seq bigint NOT NULL DEFAULT 0,"
    " online bigint NOT NULL DEFAULT 0, status_ts double precision)",
    "CREATE UNIQUE INDEX idx_boxes_credential_hash ON boxes (credential_hash)",
    *_READINGS_V1,
    # -- rollouts (sqlite_schema ROLLOUT_MIGRATIONS) ---------------------------------------------
    "CREATE TABLE box_inventory (box_id text PRIMARY KEY, hardware text NOT NULL, agent_version text NOT NULL,"
    " models text NOT NULL, firmware text NOT NULL, updated_at double precision NOT NULL)",
    "CREATE TABLE box_versions (box_id text NOT NULL, kind text NOT NULL, component text NOT NULL,"
    " version text NOT NULL, PRIMARY KEY (box_id, kind, component))",
    "CREATE TABLE site_policies (site text PRIMARY KEY, policy text NOT NULL, updated_at double precision NOT NULL)",
    "CREATE TABLE rollouts (rollout_id text PRIMARY KEY, name text NOT NULL, kind text NOT NULL,"
    " target_name text NOT NULL, version text NOT NULL, component text NOT NULL, hardware text NOT NULL,"
    " filter text NOT NULL, status text NOT NULL, pause_reason text, total bigint NOT NULL,"
    " current_wave bigint NOT NULL, timeout_s bigint NOT NULL, rate_per_min double precision,"
    " respect_windows bigint NOT NULL, min_finished bigint NOT NULL, tokens double precision NOT NULL,"
    " tokens_at double precision NOT NULL, created_at double precision NOT NULL,"
    " updated_at double precision NOT NULL, rev bigint NOT NULL)",
    "CREATE INDEX rollouts_by_status ON rollouts (status, created_at)",
    "CREATE TABLE rollout_waves (rollout_id text NOT NULL, wave bigint NOT NULL, capacity bigint NOT NULL,"
    " success_pct double precision NOT NULL, error_pct double precision NOT NULL,"
    " assigned bigint NOT NULL DEFAULT 0, succeeded bigint NOT NULL DEFAULT 0, failed bigint NOT NULL DEFAULT 0,"
    " rejected bigint NOT NULL DEFAULT 0, canceled bigint NOT NULL DEFAULT 0,"
    " errors_acked bigint NOT NULL DEFAULT 0, PRIMARY KEY (rollout_id, wave))",
    "CREATE TABLE rollout_boxes (rollout_id text NOT NULL, box_id text NOT NULL, state text NOT NULL,"
    " wave bigint, reason text, reason_code text, detail text, assigned_at double precision,"
    " updated_at double precision, deadline double precision, open bigint NOT NULL DEFAULT 0,"
    " PRIMARY KEY (rollout_id, box_id))",
    # A box never runs two updates at once: at most one open action per box, enforced here.
    "CREATE UNIQUE INDEX one_open_action_per_box ON rollout_boxes (box_id) WHERE open = 1",
    "CREATE INDEX pending_targets_by_box ON rollout_boxes (box_id) WHERE state = 'pending'",
    "CREATE INDEX open_actions_by_deadline ON rollout_boxes (deadline) WHERE open = 1",
    # -- quarantine (sql_quarantine) ----------------------------------------------------------
    "CREATE TABLE quarantine (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " received_at double precision NOT NULL, transport text NOT NULL, topic text NOT NULL,"
    " reason text NOT NULL, detail text NOT NULL, size bigint NOT NULL, payload bytea NOT NULL)",
    "CREATE INDEX quarantine_by_reason ON quarantine (reason, id)",
    # -- API users (sql_users) ----------------------------------------------------------------
    "CREATE TABLE api_users (name text PRIMARY KEY, role text NOT NULL, token_hash text NOT NULL,"
    " note text NOT NULL DEFAULT '', created_at double precision NOT NULL, created_by text NOT NULL,"
    " revoked_at double precision, revoked_by text)",
    "CREATE UNIQUE INDEX api_users_by_token ON api_users (token_hash)",
    # -- audit log (sql_audit): append-only is the database's rule ----------------------------
    "CREATE TABLE audit_log (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " ts double precision NOT NULL, principal text NOT NULL, role text NOT NULL, method text NOT NULL,"
    " action text NOT NULL, target text NOT NULL, parameters text NOT NULL, source text NOT NULL,"
    " status bigint NOT NULL, outcome text NOT NULL, error text NOT NULL)",
    "CREATE INDEX audit_by_principal ON audit_log (principal, id)",
    "CREATE INDEX audit_by_action ON audit_log (action, id)",
    "CREATE INDEX audit_by_time ON audit_log (ts)",
    "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " RAISE EXCEPTION 'audit_log is append-only' USING DETAIL = TG_OP || ' on audit_log refused';"
    " END $$",
    # Statement-level: the statement is refused whatever it matches (TRUNCATE fires no row trigger).
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log"
    " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
    " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log"
    " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
    # -- admission (sql_admission) ------------------------------------------------------------
    "CREATE TABLE admission_requests (request_id text PRIMARY KEY, secret_hash text NOT NULL UNIQUE,"
    " box_id text NOT NULL, hardware text NOT NULL, site text NOT NULL, agent_version text NOT NULL,"
    " tags text NOT NULL, requested_at double precision NOT NULL, state text NOT NULL,"
    " decided_at double precision)",
    "CREATE INDEX admission_by_state ON admission_requests (state, requested_at)",
    "CREATE TABLE box_revocations (box_id text PRIMARY KEY, revoked_at double precision NOT NULL)",
    # -- alerts (sql_alerts) ------------------------------------------------------------------
    "CREATE TABLE alerts (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, box_id text,"
    " kind text NOT NULL, detail text NOT NULL, raised_at double precision NOT NULL,"
    " acked_at double precision, acked_by text)",
    "CREATE INDEX alerts_by_kind ON alerts (kind, id)",
    "CREATE INDEX alerts_by_box ON alerts (box_id, id)",
    "CREATE INDEX alerts_open ON alerts (id) WHERE acked_at IS NULL",
    # -- seq tracking (sql_seq) ---------------------------------------------------------------
    "CREATE TABLE box_seq (box_id text PRIMARY KEY, contig bigint, above text NOT NULL, base bigint,"
    " fresh bigint NOT NULL, updated_at double precision NOT NULL)",
    "CREATE TABLE seq_gaps (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, box_id text NOT NULL,"
    " first bigint NOT NULL, last bigint NOT NULL, missing bigint NOT NULL, reason text NOT NULL,"
    " detected_at double precision NOT NULL, alert_id bigint NOT NULL)",
    "CREATE INDEX seq_gaps_by_box ON seq_gaps (box_id, id)",
    "CREATE TABLE seq_dropped (box_id text NOT NULL, first bigint NOT NULL, last bigint NOT NULL,"
    " reason text NOT NULL, seqs bigint NOT NULL, announced_at double precision NOT NULL,"
    " PRIMARY KEY (box_id, first, last))",
]

# -- read-only views for systems reading the database directly (migration 4) -------------------------
#
# The city platform (or a BI tool) may read PostgreSQL itself instead of the API: these views are
# its interface, kept stable while the tables behind them change. A view runs with its owner's
# rights (the server's role; never `security_invoker`), so a read-only role needs SELECT on the
# views only, and no right on any table: it cannot reach a credential or token hash, which no view
# shows (docs/data-out.md has the GRANTs). Times are timestamptz (rendered ISO 8601), and the
# readings keep `ts` (unix seconds): filter and page on `ts`, which the index readings_by_time and
# the day partitions serve; a condition on the computed `time` scans every partition.
# Changing a view later: CREATE OR REPLACE VIEW may only add columns at the end; anything else is
# DROP VIEW + CREATE VIEW in the same migration, and a column a view shows cannot change its type
# until the view is dropped.
_ISO_UTC = """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_VIEWS_V4: list[Statement] = [
    "CREATE VIEW v_readings AS SELECT r.box_id, r.seq, r.ts, to_timestamp(r.ts) AS time,"
    f" {_ISO_UTC.format('to_timestamp(r.ts)')} AS time_iso, r.device, r.point, r.value, r.unit, r.quality,"
    " r.cls, r.text FROM readings r",
    "COMMENT ON VIEW v_readings IS 'Every stored reading of every box. One reading is (box_id, seq);"
    " page in the order (ts, box_id, seq) with WHERE ts >= .. AND ts < .. AND (ts, box_id, seq) > (..):"
    " the index readings_by_time and the day partitions serve it. Read-only; see docs/data-out.md.'",
    "COMMENT ON COLUMN v_readings.ts IS 'When the box measured it: unix seconds (UTC), the box''s clock."
    " Filter on this column (indexed, partition-pruned).'",
    "COMMENT ON COLUMN v_readings.time IS 'ts as a timestamptz (for display; conditions on it are not indexed)'",
    "COMMENT ON COLUMN v_readings.time_iso IS 'ts as ISO 8601 text in UTC, microseconds: 2026-12-07T10:00:00.000000Z'",
    "COMMENT ON COLUMN v_readings.seq IS 'The box''s own sequence number, strictly increasing per box'",
    "COMMENT ON COLUMN v_readings.value IS 'The measured value; NULL when the reading has none (see quality)'",
    "COMMENT ON COLUMN v_readings.quality IS 'Quality flags, 0 = good: 1 missing, 2 out of range, 4 suspect,"
    " 8 comm failure, 16 derived, 32 counter wrapped'",
    "COMMENT ON COLUMN v_readings.cls IS 'Record class: routine, event or alarm'",
    "COMMENT ON COLUMN v_readings.text IS 'Free text of an event or alarm; NULL for measurements'",
    "CREATE VIEW v_boxes AS SELECT b.box_id, b.hardware, b.site, b.agent_version, b.tags::jsonb AS tags,"
    " to_timestamp(b.enrolled_at) AS enrolled_at, to_timestamp(b.last_seen) AS last_seen,"
    " b.online = 1 AS online, to_timestamp(b.status_ts) AS status_at, b.max_seq,"
    " v.revoked_at IS NOT NULL AS revoked, to_timestamp(v.revoked_at) AS revoked_at,"
    " i.models::jsonb AS models, i.firmware::jsonb AS firmware, to_timestamp(i.updated_at) AS inventory_at"
    " FROM boxes b LEFT JOIN box_revocations v ON v.box_id = b.box_id"
    " LEFT JOIN box_inventory i ON i.box_id = b.box_id",
    "COMMENT ON VIEW v_boxes IS 'Every enrolled box: what it is, where, what it runs, whether it is online."
    " No credential or token (hash) is shown. Read-only; see docs/data-out.md.'",
    "COMMENT ON COLUMN v_boxes.last_seen IS 'Server time of the last telemetry or status received from the box'",
    "COMMENT ON COLUMN v_boxes.online IS 'The state the box last reported on its status topic (its MQTT last"
    " will reports offline when it drops)'",
    "COMMENT ON COLUMN v_boxes.status_at IS 'The box''s own time of that status report'",
    "COMMENT ON COLUMN v_boxes.max_seq IS 'Highest reading seq stored for the box (0: none yet)'",
    "COMMENT ON COLUMN v_boxes.revoked IS 'Decommissioned: its credential no longer works'",
    "COMMENT ON COLUMN v_boxes.models IS 'Edge models the box reports running {name: version}; NULL before"
    " its first inventory'",
    "COMMENT ON COLUMN v_boxes.firmware IS 'Device firmware the box reports {device: version}'",
    "CREATE VIEW v_alerts_open AS SELECT a.id, a.box_id, b.site, a.kind, a.detail::jsonb AS detail,"
    " to_timestamp(a.raised_at) AS raised_at FROM alerts a LEFT JOIN boxes b ON b.box_id = a.box_id"
    " WHERE a.acked_at IS NULL",
    "COMMENT ON VIEW v_alerts_open IS 'Alerts no operator has acknowledged yet, oldest id first when"
    " ordered by id. Read-only; see docs/data-out.md.'",
    "COMMENT ON COLUMN v_alerts_open.kind IS 'What was raised, e.g. seq_gap (readings that will never arrive)'",
    "COMMENT ON COLUMN v_alerts_open.detail IS 'The alert''s facts; seq_gap: {first, last, missing, reason}'",
    "COMMENT ON COLUMN v_alerts_open.box_id IS 'The box concerned; NULL for an alert about no one box'",
]
# -- alert lifecycle, dedup and webhook outbox (migration 7; sql_alerts 0002 on SQLite) ---------------
_ALERTS_V7: list[Statement] = [
    *(statement.format(text="text", int="bigint", real="double precision") for statement in LIFECYCLE_V2),
    "CREATE TABLE alert_outbox (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, alert_id bigint NOT NULL,"
    " event text NOT NULL, body text NOT NULL, created_at double precision NOT NULL)",
    # "Open" now also means not resolved: the view keeps its columns, only its condition changes.
    "CREATE OR REPLACE VIEW v_alerts_open AS SELECT a.id, a.box_id, b.site, a.kind, a.detail::jsonb AS detail,"
    " to_timestamp(a.raised_at) AS raised_at FROM alerts a LEFT JOIN boxes b ON b.box_id = a.box_id"
    " WHERE a.acked_at IS NULL AND a.resolved_at IS NULL",
    "COMMENT ON VIEW v_alerts_open IS 'Alerts no operator has acknowledged yet and whose condition still holds"
    " (not resolved), oldest id first when ordered by id. Read-only; see docs/data-out.md.'",
]

#: The views of migration 4: what a read-only role is granted.
VIEWS = ("v_readings", "v_boxes", "v_alerts_open")

#: Every migration, in order. Append; never edit one that has been released.
MIGRATIONS: list[Migration] = [
    Migration(1, "0001_fleet_schema", tuple(_SCHEMA_V1)),
    Migration(2, "0002_shared_by_replicas", (
        # The creation order of rollouts (ties on created_at), which SQLite's rowid gives.
        "ALTER TABLE rollouts ADD COLUMN row_order bigint GENERATED ALWAYS AS IDENTITY",
        # What SQLite keeps in its one process's memory, kept where every replica sees it.
        "CREATE TABLE store_counters (name text PRIMARY KEY, value bigint NOT NULL)",
        "INSERT INTO store_counters (name, value) VALUES ('credential_generation', 0)",
    )),
    Migration(3, "0003_leases", (
        # Which replica runs each periodic job (sql_leases; fleet_server.leases).
        "CREATE TABLE leases (name text PRIMARY KEY, holder text NOT NULL, expires_at double precision NOT NULL,"
        " acquired_at double precision NOT NULL)",
    )),
    Migration(4, "0004_read_only_views", tuple(_VIEWS_V4)),
    Migration(5, "0005_drop_store_counters", (
        # Migration 2's credential generation row was written at every change and never read: the
        # generation comes from LISTEN/NOTIFY (pg_notify), which needs no row.
        "DROP TABLE store_counters",
    )),
    Migration(6, "0006_box_commands", (
        # Commands to boxes (fleet_server.commands; sql_commands has SQLite's same table).
        "CREATE TABLE box_commands (command_id text PRIMARY KEY, box_id text NOT NULL, device text NOT NULL,"
        " command text NOT NULL, args text NOT NULL, origin text NOT NULL, created_at double precision NOT NULL,"
        " deadline double precision NOT NULL, state text NOT NULL, sent_at double precision,"
        " sends bigint NOT NULL DEFAULT 0, finished_at double precision, message text)",
        "CREATE INDEX box_commands_by_box ON box_commands (box_id, created_at)",
        "CREATE INDEX box_commands_by_state ON box_commands (state, deadline)",
        "CREATE INDEX box_commands_by_time ON box_commands (created_at, command_id)",
    )),
    Migration(7, "0007_alert_lifecycle_and_outbox", tuple(_ALERTS_V7)),
    Migration(8, "0008_box_health", (
        # The boxes' latest health figures from their check-ins (sql_health has SQLite's same table).
        "CREATE TABLE box_health (box_id text PRIMARY KEY, received_at double precision NOT NULL,"
        " box_clock double precision NOT NULL, buffer_depth bigint NOT NULL, oldest_unsent_age_s double precision,"
        " disk_used_pct double precision, devices_offline text NOT NULL)",
    )),
]


def _check_migrations(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if any(type(v) is not int or v < 1 for v in versions) or versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be positive integers in increasing order, got {versions}")


_check_migrations(MIGRATIONS)
#: The highest schema version this code knows.
SCHEMA_VERSION = MIGRATIONS[-1].version

_SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,"
    " applied_at double precision NOT NULL)"
)


def _check_idle(conn: Connection, what: str) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError(f"{what} runs its own transactions: give it an idle connection (not inside a transaction)")


def migrate(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
    """Apply the migrations the database lacks, in order; return the names applied now.

    Each runs in its own transaction with its `schema_migrations` row, under the advisory lock
    `MIGRATE_LOCK`; a concurrent caller waits, then applies only what is still missing. Raises
    StoreError, changing nothing, when the database is at a version above the highest in
    `migrations` (`SCHEMA_VERSION` by default), or when a statement fails (that migration is
    rolled back; those before it stay applied).
    """
    _check_idle(conn, "migrate")
    _check_migrations(migrations)
    known = migrations[-1].version if migrations else 0
    applied_now: list[str] = []
    current: Migration | None = None
    try:
        while True:
            current = None
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                conn.execute(_SCHEMA_MIGRATIONS)
                versions = {int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations")}
                newest = max(versions, default=0)
                if newest > known:
                    raise StoreError(
                        f"this server knows schema {known}, the database is at {newest}: run a newer server"
                        " (the database was left unchanged)")
                current = next((m for m in migrations if m.version not in versions), None)
                if current is None:
                    return applied_now
                for statement in current.statements:
                    if isinstance(statement, str):
                        conn.execute(statement)
                    else:
                        statement(conn)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (%s, %s, extract(epoch FROM clock_timestamp())::double precision)",
                    (current.version, current.name))
            log.info("schema migration %d %s applied", current.version, current.name)
            applied_now.append(current.name)
    except psycopg.Error as exc:
        step = f"migration {current.version} {current.name}" if current is not None else "reading schema_migrations"
        raise StoreError(f"cannot migrate the fleet database ({step}): {exc}") from exc


# -- readings partitions --------------------------------------------------------------------------

def partition_name(cls: str, day_start: float) -> str:
    """The daily partition of class `cls` holding the UTC day that starts at `day_start`."""
    return f"readings_{cls}_{datetime.fromtimestamp(day_start, tz=timezone.utc):%Y%m%d}"


def _day_start(ts: float) -> int:
    return int(ts // DAY_S) * DAY_S


_RANGE_BOUND = re.compile(r"FOR VALUES FROM \('?(?P<lo>[^')]+)'?\) TO \('?(?P<hi>[^')]+)'?\)")


def _partitions(conn: Connection, cls: str) -> dict[str, str]:
    """{partition name: bound expression} of the class's partition (its days and its DEFAULT)."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        (f"readings_{cls}",)).fetchall()
    return {str(name): str(bound) for name, bound in rows}


def _readings_schema(conn: Connection) -> str:
    """The schema holding `readings` as found through search_path (new partitions go there)."""
    row = conn.execute("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                       " WHERE c.oid = 'readings'::regclass").fetchone()
    assert row is not None  # a missing table raised UndefinedTable already
    return str(row[0])


def _columns(conn: Connection, table: str) -> sql.Composable:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (table,)).fetchall()
    return sql.SQL(", ").join(sql.Identifier(str(name)) for name, in rows)


def _add_day(conn: Connection, schema: str, cls: str, day: int) -> int:
    """Make the day's partition of `cls`, moving the DEFAULT partition's rows of that day into it
    (PostgreSQL refuses to attach a range some DEFAULT partition row falls in). Returns the rows
    moved. Runs inside the caller's transaction."""
    parent = sql.Identifier(schema, f"readings_{cls}")
    default = sql.Identifier(schema, f"readings_{cls}_default")
    new = sql.Identifier(schema, partition_name(cls, day))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(new, parent))
    # Held to the commit: no row of this day can reach the DEFAULT partition before the attach.
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(default))
    cols = _columns(conn, f"readings_{cls}")
    moved = conn.execute(
        sql.SQL("WITH moved AS (DELETE FROM {default} WHERE ts >= %s AND ts < %s RETURNING {cols})"
                " INSERT INTO {new} ({cols}) SELECT {cols} FROM moved").format(default=default, new=new, cols=cols),
        (day, day + DAY_S)).rowcount
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
        parent, new, sql.Literal(day), sql.Literal(day + DAY_S)))
    return max(moved, 0)


#: How long an upkeep statement waits for a table lock before it gives up for this round: below
#: PostgreSQL's deadlock_timeout (1 s), so in a lock cycle with an ingest the upkeep is the one
#: that yields, and an ingest or read never waits on upkeep for longer than this.
UPKEEP_LOCK_TIMEOUT = "300ms"


def _upkeep_locks(conn: Connection) -> None:
    """Inside an upkeep transaction: the lock timeout, then the advisory lock serialising upkeep."""
    conn.execute(f"SET LOCAL lock_timeout = '{UPKEEP_LOCK_TIMEOUT}'")
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))


def _check_count(name: str, value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _check_now(now: float) -> None:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"now must be finite unix seconds, got {now!r}")


def ensure_partitions(conn: Connection, now: float, days_ahead: int = 7, days_back: int = 1) -> list[str]:
    """Create the missing daily partitions of every class for the UTC days from `days_back` days
    before `now`'s day to `days_ahead` days after it; return the names created now (sorted).

    Idempotent; two servers running it at once are serialised by the advisory lock
    `PARTITION_LOCK` (the second finds the partitions made). Rows the DEFAULT partition holds for
    a new day are moved into it, in the same transaction.

    Each partition is its own short transaction, under `UPKEEP_LOCK_TIMEOUT`: it needs the class's
    DEFAULT partition exclusively, and an ingest or a read holding locks on other partitions
    could otherwise deadlock with an upkeep holding several. Upkeep yields instead: a partition
    it could not lock in time is left for the next round (it is logged, and not in the result).
    """
    _check_now(now)
    _check_count("days_ahead", days_ahead)
    _check_count("days_back", days_back)
    _check_idle(conn, "ensure_partitions")
    first = _day_start(now) - days_back * DAY_S
    days = [first + i * DAY_S for i in range(days_back + 1 + days_ahead)]
    created: list[str] = []
    try:
        schema = _readings_schema(conn)
        for cls in CLASSES:
            missing = [day for day in days if partition_name(cls, day) not in _partitions(conn, cls)]
            for day in missing:
                name = partition_name(cls, day)
                try:
                    with conn.transaction():
                        _upkeep_locks(conn)
                        if name in _partitions(conn, cls):  # made meanwhile by another server
                            continue
                        moved = _add_day(conn, schema, cls, day)
                except psycopg.errors.LockNotAvailable:
                    log.info("partition %s not created this round: its table is busy (next round)", name)
                    continue
                if moved:
                    log.warning("partition %s created with %d rows moved from readings_%s_default", name, moved, cls)
                created.append(name)
    except psycopg.Error as exc:
        raise StoreError(f"cannot create the readings partitions: {exc}") from exc
    return sorted(created)


def drop_expired(conn: Connection, now: float, retention_days: Mapping[str, int]) -> list[str]:
    """Detach and drop the daily partitions of each class in `retention_days` whose whole day is
    older than that many days before `now` (its end <= now - days * 86400); return the names
    dropped (sorted). Rows are never deleted one by one; DEFAULT partitions are never touched
    (their rows stay, see the module's docstring); a class not named keeps everything.
    Serialised with `ensure_partitions` by the same advisory lock."""
    _check_now(now)
    for cls, days in retention_days.items():
        if cls not in CLASSES:
            raise ValueError(f"unknown reading class {cls!r}; the classes are {', '.join(CLASSES)}")
        if type(days) is not int or days < 1:
            raise ValueError(f"retention for {cls!r} must be a positive number of days, got {days!r}")
    _check_idle(conn, "drop_expired")
    dropped: list[str] = []
    try:
        schema = _readings_schema(conn)
        for cls, days in retention_days.items():
            cutoff = now - days * DAY_S
            for name in list(_expired(_partitions(conn, cls), cutoff)):
                table = sql.Identifier(schema, name)
                try:
                    with conn.transaction():  # one partition at a time, yielding to ingest (see ensure_partitions)
                        _upkeep_locks(conn)
                        if name not in _partitions(conn, cls):  # dropped meanwhile by another server
                            continue
                        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                            sql.Identifier(schema, f"readings_{cls}"), table))
                        conn.execute(sql.SQL("DROP TABLE {}").format(table))
                except psycopg.errors.LockNotAvailable:
                    log.info("partition %s not dropped this round: its table is busy (next round)", name)
                    continue
                dropped.append(name)
    except psycopg.Error as exc:
        raise StoreError(f"cannot drop expired readings partitions: {exc}") from exc
    for name in dropped:
        log.info("readings partition %s dropped (past retention)", name)
    return sorted(dropped)


def _expired(partitions: Mapping[str, str], cutoff: float) -> Iterable[str]:
    for name, bound in sorted(partitions.items()):
        match = _RANGE_BOUND.fullmatch(bound)  # DEFAULT (and anything not a range) never matches
        if match is not None and float(match["hi"]) <= cutoff:
            yield name
