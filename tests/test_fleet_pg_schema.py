"""The PostgreSQL schema, its migrations and the readings partitions (fleet_server.store.pg_schema),
against a real server.

Every test runs in its own schema (random name, dropped with CASCADE afterwards), reached through
`search_path`, so nothing here names `public`. The database is $QUANEDGE_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/test); the tests that need it are skipped when it is not
reachable.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from core.reading import RecordClass
from fleet_server.errors import StoreError
from fleet_server.store import pg_schema
from fleet_server.store.pg_schema import (
    CLASSES,
    MIGRATIONS,
    SCHEMA_VERSION,
    VIEWS,
    Migration,
    drop_expired,
    ensure_partitions,
    migrate,
    partition_name,
)

CONNINFO = os.environ.get("QUANEDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DAY = 86400
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc).timestamp()  # noon: day D0 is 2026-12-07
D0 = NOW - 12 * 3600

#: Kept by PostgreSQL only: migrations, and what SQLite's single process keeps in memory or in rowid.
PG_ONLY_TABLES = {"schema_migrations"}
PG_ONLY_COLUMNS = {("rollouts", "row_order")}
TABLES = {
    "enrollment_tokens", "boxes", "readings", "box_inventory", "box_versions", "site_policies", "rollouts",
    "rollout_waves", "rollout_boxes", "quarantine", "api_users", "audit_log", "admission_requests",
    "box_revocations", "alerts", "alert_outbox", "box_seq", "seq_gaps", "seq_dropped", "leases", "schema_migrations",
    "box_commands", "box_health",
}
INSERT_READING = (
    "INSERT INTO readings (box_id, seq, ts, device, point, value, unit, quality, cls, text)"
    " VALUES (%s, %s, %s, 'meter', 'kw', 1.5, 'kW', 0, %s, NULL) ON CONFLICT DO NOTHING"
)


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    try:
        conn = psycopg.connect(CONNINFO, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {CONNINFO} (set QUANEDGE_TEST_PG): {exc}")
    with conn:
        yield conn


@pytest.fixture
def schema(admin: Any) -> Iterator[str]:
    name = "qe_test_" + secrets.token_hex(6)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


def connect(schema: str, autocommit: bool = True) -> Any:
    return psycopg.connect(CONNINFO, autocommit=autocommit, options=f"-c search_path={schema}")


@pytest.fixture
def conn(schema: str) -> Iterator[Any]:
    with connect(schema) as c:
        yield c


def add(conn: Any, box: str, seq: int, ts: float, cls: str = "routine") -> int:
    """Insert one reading as the store does (duplicates ignored); 1 if stored, 0 if a duplicate."""
    return int(conn.execute(INSERT_READING, (box, seq, ts, cls)).rowcount)


def located(conn: Any) -> dict[tuple[str, int, str], str]:
    """{(box, seq, cls): the partition holding it}."""
    rows = conn.execute("SELECT r.box_id, r.seq, r.cls, c.relname FROM readings r"
                        " JOIN pg_class c ON c.oid = r.tableoid").fetchall()
    return {(box, seq, cls): where for box, seq, cls, where in rows}


def relations(conn: Any) -> list[tuple[str, str]]:
    """Every relation of the test's schema, with its kind: what 'nothing changed' compares."""
    return conn.execute("SELECT relname, relkind::text FROM pg_class"
                        " WHERE relnamespace = current_schema()::regnamespace ORDER BY relname").fetchall()


def run_together(workers: list[Callable[[], Any]]) -> list[Any]:
    """Start each worker in its own thread at the same moment; return results (or exceptions)."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = workers[i]()
        except Exception as exc:  # reported to the test, which fails on it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return results


# -- without a server -------------------------------------------------------------------------------

def test_classes_are_the_record_classes() -> None:
    assert set(CLASSES) == {c.value for c in RecordClass}


def test_partition_names_are_utc_days() -> None:
    assert partition_name("routine", D0) == "readings_routine_20261207"
    assert partition_name("alarm", D0 - DAY) == "readings_alarm_20261206"


def test_schema_version_is_the_last_migration() -> None:
    assert SCHEMA_VERSION == MIGRATIONS[-1].version == max(m.version for m in MIGRATIONS)


# -- migrations --------------------------------------------------------------------------------------

def test_migrate_creates_everything_in_its_schema_and_is_idempotent(conn: Any, schema: str) -> None:
    assert migrate(conn) == [m.name for m in MIGRATIONS]
    tables = {name for name, in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
        " AND relkind IN ('r', 'p') AND NOT relispartition")}
    assert tables == TABLES
    views = {name for name, in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind = 'v'")}
    assert views == set(VIEWS)   # PostgreSQL only: read-only views for downstream systems (migration 4)
    tree = conn.execute("SELECT relid::regclass::text, parentrelid::regclass::text, isleaf"
                        " FROM pg_partition_tree('readings') ORDER BY 1").fetchall()
    assert tree == sorted(
        [("readings", None, False)]
        + [(f"readings_{c}", "readings", False) for c in CLASSES]
        + [(f"readings_{c}_default", f"readings_{c}", True) for c in CLASSES])
    rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(m.version, m.name) for m in MIGRATIONS]
    before = relations(conn)

    assert migrate(conn) == []
    assert relations(conn) == before
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'readings'"
                        " AND relnamespace = %s::regnamespace", (schema,)).fetchone()[0] == 1


def _sqlite_schema(tmp_path: Path) -> sqlite3.Connection:
    from fleet_server.store.sqlite import SqliteStore

    SqliteStore(tmp_path / "fleet.db").close()
    return sqlite3.connect(tmp_path / "fleet.db")


def _pg_indexes(conn: Any) -> dict[str, tuple[str, bool, bool, tuple[str, ...], str | None]]:
    """{index: (table, unique, primary, columns, predicate)} of the schema's top-level tables; an
    expression column is None, as SQLite's PRAGMA index_info shows it."""
    rows = conn.execute(
        "SELECT i.relname, t.relname, ix.indisunique, ix.indisprimary,"
        " array(SELECT a.attname::text FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, n)"
        "       LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.n),"
        " pg_get_expr(ix.indpred, ix.indrelid)"
        " FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_class t ON t.oid = ix.indrelid"
        " WHERE t.relnamespace = current_schema()::regnamespace AND NOT t.relispartition").fetchall()
    return {name: (table, unique, primary, tuple(cols), pred) for name, table, unique, primary, cols, pred in rows}


def _predicate(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.replace("::text", "").strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return text


def test_schema_matches_the_sqlite_schema(conn: Any, tmp_path: Path) -> None:
    """Same tables, columns (order, type, NOT NULL, default, identity), indexes and unique keys as
    the SQLite migrations create; the deviations are the documented ones."""
    migrate(conn)
    lite = _sqlite_schema(tmp_path)
    lite_tables = dict(lite.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"
                                    " AND name NOT LIKE 'sqlite_%' AND name != '_sqlite_migrations'").fetchall())
    assert set(lite_tables) == TABLES - PG_ONLY_TABLES
    types = {"TEXT": "text", "REAL": "double precision", "INTEGER": "bigint", "BLOB": "bytea"}
    pg_index = _pg_indexes(conn)
    seen_pg: set[str] = set()
    for table, create in lite_tables.items():
        columns = lite.execute(f"PRAGMA table_info({table})").fetchall()
        pg_columns = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default, is_identity FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (table,)).fetchall()
        pg_columns = [c for c in pg_columns if (table, c[0]) not in PG_ONLY_COLUMNS]
        assert [c[1] for c in columns] == [c[0] for c in pg_columns], table
        for (_, name, typ, notnull, default, pk), (_, pg_type, nullable, pg_default, identity) in zip(
                columns, pg_columns):
            where = f"{table}.{name}"
            assert pg_type == types[typ], where
            assert (nullable == "NO") == bool(notnull or pk), where
            autoincrement = re.search(rf"\b{name} INTEGER PRIMARY KEY AUTOINCREMENT", create) is not None
            assert (identity == "YES") == autoincrement, where
            pg_default = None if pg_default is None else re.sub(r"::text$", "", pg_default)
            assert pg_default == default, where
        # primary key
        lite_pk = tuple(c[1] for c in sorted((c for c in columns if c[5]), key=lambda c: c[5]))
        (pg_pk,) = [cols for t, _, primary, cols, _ in pg_index.values() if t == table and primary]
        if table == "readings":  # a partitioned table's unique keys hold its partition keys
            assert (lite_pk, pg_pk) == (("box_id", "seq"), ("box_id", "seq", "cls", "ts"))
        else:
            assert pg_pk == lite_pk, table
        seen_pg |= {name for name, (t, _, primary, _, _) in pg_index.items() if t == table and primary}
        # indexes and UNIQUE constraints
        for _, index, unique, origin, _ in lite.execute(f"PRAGMA index_list({table})").fetchall():
            cols = tuple(r[2] for r in lite.execute(f"PRAGMA index_info({index})").fetchall())
            if origin == "pk":
                continue
            if origin == "u":  # an inline UNIQUE: any unique index on the same columns
                match = [n for n, (t, u, _, c, _) in pg_index.items() if t == table and u and c == cols]
                assert match, f"{table}: UNIQUE {cols}"
                seen_pg.add(match[0])
                continue
            index_sql = lite.execute("SELECT sql FROM sqlite_master WHERE name = ?", (index,)).fetchone()[0]
            lite_pred = _predicate(index_sql.split(" WHERE ", 1)[1]) if " WHERE " in index_sql else None
            assert index in pg_index, f"index {index} missing"
            t, u, _, c, pred = pg_index[index]
            assert (t, u, c, _predicate(pred)) == (table, bool(unique), cols, lite_pred), index
            seen_pg.add(index)
    # PostgreSQL's own additions: the bookkeeping (readings_by_time is SQLite's too, migration 0003)
    assert set(pg_index) - seen_pg == {"schema_migrations_pkey"}
    triggers = {name for name, in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass AND NOT tgisinternal")}
    lite_triggers = {name for name, in lite.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == lite_triggers | {"audit_log_no_truncate"}


def _future_migration(version: int) -> Migration:
    def fill(c: Any) -> None:  # a data step: a callable gets the connection, inside the transaction
        c.execute("UPDATE boxes SET firmware_note = 'set by migration ' || %s", (str(version),))

    return Migration(version, f"{version:04d}_test_firmware_note", (
        "ALTER TABLE boxes ADD COLUMN firmware_note text NOT NULL DEFAULT ''",
        "CREATE INDEX readings_by_device ON readings (device, ts)",
        fill,
    ))


def test_an_old_database_upgrades_with_its_data(conn: Any) -> None:
    assert migrate(conn, MIGRATIONS[:1]) == [MIGRATIONS[0].name]
    ensure_partitions(conn, NOW)
    conn.execute("INSERT INTO boxes (box_id, hardware, site, agent_version, tags, credential_hash, enrolled_at)"
                 " VALUES ('box-1', 'pi4', 'depot', '1.0', '[]', 'h1', %s)", (NOW,))
    assert add(conn, "box-1", 1, NOW) == add(conn, "box-1", 2, NOW + 1000 * DAY, "alarm") == 1
    before = located(conn)

    future = _future_migration(SCHEMA_VERSION + 1)
    applied = migrate(conn, [*MIGRATIONS, future])

    assert applied == [m.name for m in MIGRATIONS[1:]] + [future.name]
    assert conn.execute("SELECT box_id, site, firmware_note FROM boxes").fetchall() == [
        ("box-1", "depot", f"set by migration {SCHEMA_VERSION + 1}")]
    assert located(conn) == before
    # the new index reached every partition, the daily ones and the defaults
    leaves = conn.execute("SELECT count(*) FROM pg_partition_tree('readings') WHERE isleaf").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM pg_partition_tree('readings_by_device') WHERE isleaf"
                        ).fetchone()[0] == leaves
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION + 1
    assert migrate(conn, [*MIGRATIONS, future]) == []


def test_a_failing_migration_is_rolled_back_alone(conn: Any) -> None:
    broken = Migration(SCHEMA_VERSION + 1, "9999_broken", (
        "CREATE TABLE half_done (x bigint)",
        "ALTER TABLE no_such_table ADD COLUMN y bigint",
    ))
    with pytest.raises(StoreError, match=rf"migration {SCHEMA_VERSION + 1} 9999_broken.*no_such_table"):
        migrate(conn, [*MIGRATIONS, broken])
    assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
    assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == SCHEMA_VERSION
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_newer_database_is_refused_and_left_unchanged(conn: Any) -> None:
    migrate(conn)
    conn.execute("INSERT INTO schema_migrations VALUES (%s, 'from_a_newer_server', 0)", (SCHEMA_VERSION + 1,))
    before = relations(conn), conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()

    with pytest.raises(StoreError) as caught:
        migrate(conn)

    message = str(caught.value)
    assert f"knows schema {SCHEMA_VERSION}" in message and f"at {SCHEMA_VERSION + 1}" in message
    assert "run a newer server" in message
    assert (relations(conn), conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()) == before


def test_a_newer_empty_database_gets_nothing_applied(conn: Any) -> None:
    conn.execute("CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,"
                 " applied_at double precision NOT NULL)")
    conn.execute("INSERT INTO schema_migrations VALUES (%s, 'from_a_newer_server', 0)", (SCHEMA_VERSION + 1,))
    before = relations(conn)
    with pytest.raises(StoreError, match=f"this server knows schema {SCHEMA_VERSION}, the database is at "
                                         f"{SCHEMA_VERSION + 1}"):
        migrate(conn)
    assert relations(conn) == before


def test_two_replicas_starting_together_migrate_once(schema: str) -> None:
    conns = [connect(schema) for _ in range(2)]
    try:
        results = run_together([lambda c=c: migrate(c) for c in conns])
    finally:
        for c in conns:
            c.close()
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(name for r in results for name in r) == [m.name for m in MIGRATIONS]
    with connect(schema) as c:
        assert c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
        assert {n for n, in c.execute("SELECT relname FROM pg_class WHERE relnamespace ="
                                      " current_schema()::regnamespace AND relkind IN ('r', 'p')"
                                      " AND NOT relispartition")} == TABLES


def test_functions_want_an_idle_connection(schema: str) -> None:
    with connect(schema, autocommit=False) as c:
        c.execute("SELECT 1")  # a transaction is now open
        for call in (lambda: migrate(c), lambda: ensure_partitions(c, NOW),
                     lambda: drop_expired(c, NOW, {"routine": 7})):
            with pytest.raises(ValueError, match="idle connection"):
                call()


# -- readings --------------------------------------------------------------------------------------

def test_a_redelivered_reading_is_stored_once(conn: Any) -> None:
    migrate(conn)
    ensure_partitions(conn, NOW)
    assert add(conn, "box-1", 7, NOW) == 1
    assert add(conn, "box-1", 7, NOW) == 0  # same (box, seq, cls, ts): the duplicate is ignored
    assert add(conn, "box-2", 7, NOW) == 1  # another box's seq 7
    assert conn.execute("SELECT count(*) FROM readings WHERE box_id = 'box-1'").fetchone()[0] == 1
    # The documented difference from SQLite: the key holds cls and ts, so the same seq with another
    # ts is a second row here, and the conflict target (box_id, seq) has no index to match.
    assert add(conn, "box-1", 7, NOW + 1) == 1
    with pytest.raises(psycopg.errors.InvalidColumnReference):
        conn.execute(INSERT_READING.replace("ON CONFLICT", "ON CONFLICT (box_id, seq)"), ("box-1", 7, NOW, "routine"))
    assert add(conn, "box-1", 7, NOW + 1) == 0


def test_a_reading_lands_in_its_daily_partition(conn: Any) -> None:
    migrate(conn)
    assert len(ensure_partitions(conn, NOW)) == len(CLASSES) * (1 + 1 + 7)
    add(conn, "box-1", 1, NOW)
    add(conn, "box-1", 2, D0 - 1, "alarm")   # the last second of the day before
    add(conn, "box-1", 3, D0 + 7 * DAY, "event")
    assert located(conn) == {
        ("box-1", 1, "routine"): "readings_routine_20261207",
        ("box-1", 2, "alarm"): "readings_alarm_20261206",
        ("box-1", 3, "event"): "readings_event_20261214",
    }
    plan = "\n".join(r for r, in conn.execute(
        "EXPLAIN SELECT * FROM readings WHERE ts >= %s AND ts < %s ORDER BY ts", (D0, D0 + 3600)))
    assert "readings_routine_20261207" in plan and "readings_routine_20261208" not in plan  # pruned by day


def test_ensure_partitions_is_idempotent_and_safe_when_run_at_once(schema: str, conn: Any) -> None:
    migrate(conn)
    conns = [connect(schema) for _ in range(2)]
    try:
        results = run_together([lambda c=c: ensure_partitions(c, NOW, days_ahead=3, days_back=2) for c in conns])
    finally:
        for c in conns:
            c.close()
    assert not [r for r in results if isinstance(r, Exception)], results
    made = sorted(name for r in results for name in r)
    assert made == sorted(partition_name(c, D0 + k * DAY) for c in CLASSES for k in range(-2, 4))
    assert ensure_partitions(conn, NOW, days_ahead=3, days_back=2) == []
    assert ensure_partitions(conn, NOW + DAY, days_ahead=3, days_back=2) == sorted(
        partition_name(c, D0 + 4 * DAY) for c in CLASSES)


def test_a_future_reading_waits_in_the_default_partition_until_its_day_is_made(conn: Any) -> None:
    migrate(conn)
    ensure_partitions(conn, NOW)
    far = NOW + 400 * DAY
    add(conn, "box-1", 1, far)
    add(conn, "box-1", 2, far + 60, "event")
    add(conn, "box-1", 3, far + 5 * DAY)    # a day that will not be made below
    assert set(located(conn).values()) == {"readings_routine_default", "readings_event_default"}

    made = ensure_partitions(conn, far, days_ahead=0, days_back=0)

    day = far - far % DAY
    assert made == sorted(partition_name(c, day) for c in CLASSES)
    assert located(conn) == {
        ("box-1", 1, "routine"): partition_name("routine", day),
        ("box-1", 2, "event"): partition_name("event", day),
        ("box-1", 3, "routine"): "readings_routine_default",
    }
    assert add(conn, "box-1", 1, far) == 0  # still a duplicate in its new home
    assert conn.execute("SELECT value, unit, quality FROM readings WHERE seq = 1").fetchone() == (1.5, "kW", 0)


def test_a_reading_arriving_while_its_day_is_made_is_moved_too(schema: str, conn: Any) -> None:
    """An ingest transaction holding a new row of that day in the DEFAULT partition makes the
    upkeep wait (its lock on the DEFAULT partition), then the row is moved with the others."""
    migrate(conn)
    far = NOW + 400 * DAY
    day = far - far % DAY
    with connect(schema, autocommit=False) as ingest, connect(schema) as upkeep:
        add(ingest, "box-1", 1, far)  # not committed yet
        results: list[Any] = []

        def run() -> None:
            try:
                results.append(ensure_partitions(upkeep, far, days_ahead=0, days_back=0))
            except Exception as exc:  # reported below
                results.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        for _ in range(200):
            state = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                 (upkeep.info.backend_pid,)).fetchone()
            if state == ("Lock",):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the upkeep never waited for the ingest transaction")
        ingest.commit()
        worker.join(timeout=30)
    assert results == [sorted(partition_name(c, day) for c in CLASSES)]
    assert located(conn) == {("box-1", 1, "routine"): partition_name("routine", day)}


def test_drop_expired_drops_only_old_days_of_the_class_asked(conn: Any) -> None:
    migrate(conn)
    ensure_partitions(conn, NOW, days_ahead=0, days_back=10)
    for seq, days_ago in enumerate((10, 5, 1, 0), start=1):
        add(conn, "box-1", seq, NOW - days_ago * DAY)
    add(conn, "box-1", 10, NOW - 10 * DAY, "event")
    add(conn, "box-1", 11, 1000.0)  # 1970: no partition; it waits in the default partition

    dropped = drop_expired(conn, NOW, {"routine": 3})

    # day D0-4 ended at D0-3d, before NOW-3d (= D0-3d+12h); day D0-3 ends after it and stays
    assert dropped == sorted(partition_name("routine", D0 - k * DAY) for k in range(4, 11))
    assert sorted(located(conn)) == [("box-1", 3, "routine"), ("box-1", 4, "routine"),
                                     ("box-1", 10, "event"), ("box-1", 11, "routine")]
    assert located(conn)[("box-1", 11, "routine")] == "readings_routine_default"
    left = {name for name, in conn.execute(
        "SELECT relid::text FROM pg_partition_tree('readings_routine') WHERE isleaf")}
    assert left == {"readings_routine_default"} | {partition_name("routine", D0 - k * DAY) for k in range(0, 4)}
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", (dropped,)).fetchone()[0] == 0
    assert drop_expired(conn, NOW, {"routine": 3}) == []
    assert drop_expired(conn, NOW, {}) == []
    for bad in ({"bogus": 3}, {"routine": 0}, {"routine": 1.5}):
        with pytest.raises(ValueError):
            drop_expired(conn, NOW, bad)  # type: ignore[arg-type]


def test_partition_upkeep_before_migrate_is_a_store_error(conn: Any) -> None:
    with pytest.raises(StoreError, match="readings"):
        ensure_partitions(conn, NOW)


# -- audit log -------------------------------------------------------------------------------------

def test_the_audit_log_is_append_only(conn: Any) -> None:
    migrate(conn)
    insert = ("INSERT INTO audit_log (ts, principal, role, method, action, target, parameters, source, status,"
              " outcome, error) VALUES (%s, 'alice', 'admin', 'POST', 'x', 't', '{}', '127.0.0.1', 200, 'ok', '')"
              " RETURNING id")
    ids = [conn.execute(insert, (NOW + i,)).fetchone()[0] for i in range(2)]
    assert ids == [1, 2]
    for statement in ("UPDATE audit_log SET outcome = 'forged' WHERE id = 1", "DELETE FROM audit_log WHERE id = 1",
                      "DELETE FROM audit_log WHERE id = 999", "TRUNCATE audit_log"):
        with pytest.raises(psycopg.errors.RaiseException, match="audit_log is append-only"):
            conn.execute(statement)
    assert conn.execute("SELECT id, outcome FROM audit_log ORDER BY id").fetchall() == [(1, "ok"), (2, "ok")]


def test_module_names_no_schema() -> None:
    source = Path(pg_schema.__file__).read_text()
    assert "public." not in source and "'public'" not in source
