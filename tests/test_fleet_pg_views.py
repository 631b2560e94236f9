"""The read-only views of PostgreSQL migration 4 (v_readings, v_boxes, v_alerts_open), against a real
server: they exist with their documented columns, return what the store holds, show no secret,
and a role granted SELECT on them alone can read them and nothing else."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from pg_support import pg_schema
from psycopg import sql

from core.reading import Quality, Reading, RecordClass
from fleet_server.access import Role
from fleet_server.alerts import AlertKey
from fleet_server.readings_out import ReadingsQuery
from fleet_server.rollout.model import Inventory
from fleet_server.store.pg import PgStore
from fleet_server.store.pg_schema import VIEWS

T0 = 1_700_000_000.0
COLUMNS = {
    "v_readings": ["box_id", "seq", "ts", "time", "time_iso", "device", "point", "value", "unit", "quality", "cls",
                   "text"],
    "v_boxes": ["box_id", "hardware", "site", "agent_version", "tags", "enrolled_at", "last_seen", "online",
                "status_at", "max_seq", "revoked", "revoked_at", "models", "firmware", "inventory_at"],
    "v_alerts_open": ["id", "box_id", "site", "kind", "detail", "raised_at"],
}


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


@pytest.fixture
def db() -> Iterator[tuple[PgStore, Any]]:
    """A PgStore on a schema of its own, and a plain connection to that schema (as a downstream
    system would read it)."""
    with pg_schema() as (url, schema):
        store = PgStore(url, schema=schema, clock=lambda: T0, max_size=2)
        try:
            with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
                yield store, conn
        finally:
            store.close()


def fill(store: PgStore) -> dict[str, str]:
    credentials = dict(zip(("pole-1", "pole-2"), store.provision_boxes([
        ("pole-1", "pi4", "5th-ave", ["north", "pilot"], Inventory("1.4.0", "pi4", {"occupancy": "2.1"},
                                                                   {"meter": "3.0"})),
        ("pole-2", "pi4", "harbour", [], None),
    ])))
    store.ingest("pole-1", [Reading("meter", "kw", 1.5 * s, "kW", T0 + s + 0.25, Quality(s % 2), RecordClass.ROUTINE,
                                    None, seq=s) for s in range(1, 6)])
    store.ingest("pole-2", [Reading("gate", "open", None, "", T0 + 3.25, Quality.MISSING, RecordClass.EVENT,
                                    "opened by hand", seq=1)])
    store.set_box_status("pole-1", True, T0 + 10)
    store.revoke_box("pole-2")
    acked = store.raise_alert("pole-1", "seq_gap", {"first": 9, "last": 9, "missing": 1, "reason": "unannounced"},
                              T0 + 20)
    store.ack_alert(acked, "otto", T0 + 30)
    store.raise_alert("pole-2", "seq_gap", {"first": 4, "last": 7, "missing": 4, "reason": "unannounced"}, T0 + 40)
    store.raise_alert(None, "disk_full", {"free_bytes": 0}, T0 + 50)
    store.create_enrollment_token(3600, 1, "spare")
    store.create_user("city", Role.VIEWER, "", "test")
    return credentials


def columns(conn: Any, view: str) -> list[str]:
    return [name for name, in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s ORDER BY ordinal_position", (view,))]


def test_the_views_exist_with_their_documented_columns(db: tuple[PgStore, Any]) -> None:
    _, conn = db
    kinds = dict(conn.execute("SELECT relname, relkind::text FROM pg_class"
                              " WHERE relnamespace = current_schema()::regnamespace AND relname LIKE 'v\\_%'"))
    assert kinds == {v: "v" for v in VIEWS} and set(VIEWS) == set(COLUMNS)
    for view, expected in COLUMNS.items():
        assert columns(conn, view) == expected, view
        assert conn.execute("SELECT obj_description(%s::regclass, 'pg_class')", (view,)).fetchone()[0], view
        options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = %s::regclass", (view,)).fetchone()[0]
        assert not options or "security_invoker=true" not in options   # the owner's rights, not the reader's


def test_v_readings_are_the_stored_readings(db: tuple[PgStore, Any]) -> None:
    store, conn = db
    fill(store)
    out, _ = store.readings_page(ReadingsQuery(limit=100))
    rows = conn.execute("SELECT * FROM v_readings ORDER BY ts, box_id, seq").fetchall()
    assert [(r[0], r[1], r[2], *r[5:]) for r in rows] == [
        (o.box_id, o.reading.seq, o.reading.ts, o.reading.device, o.reading.point, o.reading.value, o.reading.unit,
         int(o.reading.quality), o.reading.cls.value, o.reading.text) for o in out]
    for row in rows:
        assert row[3] == utc(row[2])
        assert row[4] == utc(row[2]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert rows[0][4] == "2023-11-14T22:13:21.250000Z"
    # a window on ts reads only that day's partitions (the view is flattened into the query)
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN SELECT * FROM v_readings WHERE ts >= %s AND ts < %s AND (ts, box_id, seq) > (%s, %s, %s)"
        " ORDER BY ts, box_id, seq LIMIT 10", (T0, T0 + 3600, T0, "", 0)))
    day = utc(T0).strftime("%Y%m%d")
    scanned = {line.split(" on ")[1].split()[0] for line in plan.splitlines() if " on readings_" in line}
    assert scanned == {f"readings_{c}_{day}" for c in ("routine", "event", "alarm")}, plan


def test_v_boxes_and_v_alerts_open(db: tuple[PgStore, Any]) -> None:
    store, conn = db
    fill(store)
    boxes = {r[0]: dict(zip(COLUMNS["v_boxes"], r)) for r in conn.execute("SELECT * FROM v_boxes")}
    assert set(boxes) == {"pole-1", "pole-2"}
    one, two = boxes["pole-1"], boxes["pole-2"]
    assert (one["hardware"], one["site"], one["agent_version"], one["tags"]) == ("pi4", "5th-ave", "1.4.0",
                                                                                 ["north", "pilot"])
    assert (one["online"], one["status_at"], one["max_seq"], one["revoked"], one["revoked_at"]) == (
        True, utc(T0 + 10), 5, False, None)
    assert (one["models"], one["firmware"], one["inventory_at"]) == ({"occupancy": "2.1"}, {"meter": "3.0"}, utc(T0))
    assert (one["enrolled_at"], one["last_seen"]) == (utc(T0), utc(T0))
    assert (two["online"], two["revoked"], two["revoked_at"], two["models"], two["max_seq"]) == (
        False, True, utc(T0), None, 1)
    alerts = conn.execute("SELECT box_id, site, kind, detail, raised_at FROM v_alerts_open ORDER BY id").fetchall()
    assert alerts == [
        ("pole-2", "harbour", "seq_gap", {"first": 4, "last": 7, "missing": 4, "reason": "unannounced"},
         utc(T0 + 40)),
        (None, None, "disk_full", {"free_bytes": 0}, utc(T0 + 50)),
    ]
    # migration 7: a resolved alert is no longer open, acknowledged or not
    assert store.resolve_alert(AlertKey("disk_full", None), T0 + 60) is not None
    assert [r[0] for r in conn.execute("SELECT kind FROM v_alerts_open ORDER BY id")] == ["seq_gap"]


def test_no_view_shows_a_secret(db: tuple[PgStore, Any]) -> None:
    store, conn = db
    credentials = fill(store)
    secret_columns = [(v, c) for v in VIEWS for c in columns(conn, v)
                      if any(word in c for word in ("hash", "token", "credential", "secret", "passw"))]
    assert secret_columns == []
    hashes = {h for h, in conn.execute(
        "SELECT credential_hash FROM boxes UNION ALL SELECT token_hash FROM enrollment_tokens"
        " UNION ALL SELECT token_hash FROM api_users")}
    assert len(hashes) == 4
    for view in VIEWS:
        text = "\n".join(str(row) for row in conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(view))))
        assert not any(h in text for h in hashes), view
        assert not any(c in text for c in credentials.values()), view


@pytest.fixture
def reader(db: tuple[PgStore, Any]) -> Iterator[str]:
    """A role with USAGE on the schema and SELECT on the views, nothing else (dropped afterwards)."""
    store, conn = db
    role = "qe_reader_" + secrets.token_hex(4)
    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(store.schema or "public"),
                                                                       sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(sql.Identifier(v) for v in VIEWS), sql.Identifier(role)))
        yield role
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_granted_the_views_reads_them_and_nothing_else(db: tuple[PgStore, Any], reader: str) -> None:
    store, conn = db
    fill(store)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(reader)))
    assert conn.execute("SELECT count(*) FROM v_readings").fetchone()[0] == 6
    assert conn.execute("SELECT count(*) FROM v_boxes").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM v_alerts_open").fetchone()[0] == 2
    for query in ("SELECT credential_hash FROM boxes", "SELECT * FROM readings", "SELECT * FROM api_users",
                  "SELECT * FROM enrollment_tokens", "SELECT * FROM readings_routine_default",
                  "INSERT INTO v_readings (box_id, seq, ts, device, point, unit, quality, cls)"
                  " VALUES ('pole-1', 99, 1700000000, 'd', 'p', '', 0, 'routine')",
                  "DELETE FROM v_readings", "UPDATE v_readings SET value = 0"):   # (v_readings is updatable)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(query)
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 6
