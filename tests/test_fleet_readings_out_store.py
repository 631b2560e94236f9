"""Readings out across boxes, at the store (`Store.readings_page`), on SQLite and PostgreSQL: one
total order (ts, box_id, seq), keyset pages that neither skip nor repeat a reading while others are
ingested between them, the filters, the limits, and the cursor that carries the key."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from pg_support import BOTH_BACKENDS

from core.reading import Quality, Reading, RecordClass
from fleet_server.errors import UnknownBox
from fleet_server.readings_out import BoxReading, ReadingKey, ReadingsQuery, decode_cursor, encode_cursor
from fleet_server.store.sqlite import SqliteStore

T0 = 1_700_000_000.0  # the test clock's now: PostgreSQL has day partitions around it
BOXES = ("box-a", "box-b", "box-c")


def provision(store: Any, *boxes: str) -> None:
    store.provision_boxes([(b, "hw", "site", [], None) for b in boxes])


def reading(seq: int, ts: float, device: str = "meter", point: str = "kw",
            cls: RecordClass = RecordClass.ROUTINE, text: str | None = None) -> Reading:
    return Reading(device, point, seq / 4, "kW", ts, Quality.GOOD, cls, text, seq=seq)


def walk(store: Any, limit: int, via_cursor: bool = True, **filters: Any) -> list[BoxReading]:
    """Every page of a query, following the continuation (through the opaque cursor by default)."""
    out: list[BoxReading] = []
    after = None
    for _ in range(10_000):
        page, after = store.readings_page(ReadingsQuery(after=after, limit=limit, **filters))
        assert len(page) <= limit
        out += page
        if after is None:
            return out
        assert page and after == page[-1].key
        if via_cursor:
            after = decode_cursor(encode_cursor(after))
    raise AssertionError("paging did not end")


def keys(rows: list[BoxReading]) -> list[ReadingKey]:
    return [r.key for r in rows]


@pytest.fixture
def fleet(store: Any) -> dict[ReadingKey, BoxReading]:
    """Three boxes whose readings share timestamps (ties broken by box, then seq), spread over the
    day partitions and a far-future one (PostgreSQL's DEFAULT partition), with every class."""
    provision(store, *BOXES)
    stored: dict[ReadingKey, BoxReading] = {}
    times = [T0 - 3600.5, T0, T0, T0 + 0.1, T0 + 86400 * 3 + 0.123456789, T0 + 86400 * 400]
    for b, box in enumerate(BOXES):
        rows = [reading(seq, ts, device=f"dev{seq % 2}", point=f"p{seq % 3}", cls=list(RecordClass)[seq % 3],
                        text="gate\nopened, \"north\"" if seq == 3 else None)
                for seq, ts in enumerate(times if b != 1 else times[::-1], start=1)]
        store.ingest(box, rows)
        stored.update({ReadingKey(r.ts, box, r.seq or 0): BoxReading(box, r) for r in rows})
    return stored


@BOTH_BACKENDS
def test_one_order_across_boxes_equal_times_broken_by_box_then_seq(store: Any, fleet: dict[Any, Any]) -> None:
    expected = sorted(fleet)
    for limit in (1, 2, 3, 7, 18, 1000):
        rows = walk(store, limit)
        assert keys(rows) == expected, limit
    assert walk(store, 5) == [fleet[k] for k in expected]   # every field as stored, text with newline and quotes
    at_t0 = [k for k in expected if k.ts == T0]
    assert at_t0 == [(T0, "box-a", 2), (T0, "box-a", 3), (T0, "box-b", 4), (T0, "box-b", 5),
                     (T0, "box-c", 2), (T0, "box-c", 3)]


@BOTH_BACKENDS
def test_a_full_last_page_says_nothing_follows(store: Any, fleet: dict[Any, Any]) -> None:
    page, after = store.readings_page(ReadingsQuery(limit=len(fleet)))
    assert len(page) == len(fleet) and after is None
    page, after = store.readings_page(ReadingsQuery(limit=len(fleet) - 1))
    assert after == page[-1].key
    rest, after = store.readings_page(ReadingsQuery(limit=len(fleet), after=after))
    assert len(rest) == 1 and after is None
    assert store.readings_page(ReadingsQuery(after=rest[0].key)) == ([], None)


@BOTH_BACKENDS
def test_rows_ingested_between_pages_shift_nothing(store: Any, fleet: dict[Any, Any]) -> None:
    """Every reading present at the first page comes out exactly once and in order, whatever is
    stored between the pages: before the cursor (not returned: keyset), at the cursor's very time
    on either side of its box and seq, and after it (returned in place)."""
    present = sorted(fleet)
    provision(store, "box-0", "box-z")
    page, after = store.readings_page(ReadingsQuery(limit=4))
    out = list(page)
    assert after is not None
    late: list[ReadingKey] = []
    seq = {"box-0": 0, "box-z": 0, "box-a": 100, "box-b": 100, "box-c": 100}
    for round in range(1000):
        if after is None:
            break
        # at the cursor's time: box-0 sorts before any box, box-z after, the cursor's own box with
        # a higher seq after; one reading earlier than the cursor and one later
        for box, ts in (("box-0", after.ts), ("box-z", after.ts), ("box-a", after.ts - 1.0),
                        ("box-c", after.ts + 0.5), (after.box_id, after.ts)):
            if round >= 5:   # then let the walk end
                break
            seq[box] += 1
            store.ingest(box, [reading(seq[box], ts)])
            late.append(ReadingKey(ts, box, seq[box]))
        page, after = store.readings_page(ReadingsQuery(limit=4, after=decode_cursor(encode_cursor(after))))
        out += page
    got = keys(out)
    assert got == sorted(got) and len(set(got)) == len(got)          # in order, nothing twice
    assert [k for k in got if k in fleet] == present                 # nothing present was skipped
    assert set(got) - set(present) <= set(late)
    everything = keys(walk(store, 1000))
    assert set(present) | set(late) == set(everything)


@BOTH_BACKENDS
def test_pages_while_another_thread_ingests(store: Any) -> None:
    provision(store, *BOXES)
    for box in BOXES:
        store.ingest(box, [reading(s, T0 + s // 3) for s in range(1, 301)])
    present = keys(walk(store, 10_000))
    stop, busy = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def ingest() -> None:
        seq = 300
        try:
            while not stop.is_set():
                seq += 1
                for box in BOXES:  # old and new times, in the window being paged
                    store.ingest(box, [reading(seq, T0 + (seq * 7919) % 200)])
                if seq == 310:
                    busy.set()
        except BaseException as exc:  # reported below
            failures.append(exc)

    worker = threading.Thread(target=ingest)
    try:
        page, after = store.readings_page(ReadingsQuery(limit=17))
        worker.start()
        assert busy.wait(30), "the ingest thread did not get going"
        got = keys(page)
        while after is not None:
            page, after = store.readings_page(ReadingsQuery(limit=17, after=after))
            got += keys(page)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(30)
    assert not failures and not worker.is_alive()
    assert got == sorted(got) and len(set(got)) == len(got)
    assert [k for k in got if k in set(present)] == present
    assert len(got) > len(present)  # readings stored meanwhile ahead of the cursor came out too


@BOTH_BACKENDS
def test_filters(store: Any, fleet: dict[Any, Any]) -> None:
    everything = sorted(fleet)

    def expect(pred: Any) -> list[ReadingKey]:
        return [k for k in everything if pred(fleet[k])]

    since, until = T0, T0 + 86400 * 3 + 0.123456789
    assert keys(walk(store, 2, since=since, until=until)) == expect(lambda r: since <= r.reading.ts < until)
    assert keys(walk(store, 2, since=since)) == expect(lambda r: r.reading.ts >= since)
    assert keys(walk(store, 2, until=since)) == expect(lambda r: r.reading.ts < since)
    assert walk(store, 2, since=since, until=since) == []
    assert keys(walk(store, 2, box_id="box-b")) == expect(lambda r: r.box_id == "box-b")
    assert keys(walk(store, 1, device="dev1", point="p2")) == expect(
        lambda r: (r.reading.device, r.reading.point) == ("dev1", "p2"))
    for cls in RecordClass:
        assert keys(walk(store, 2, cls=cls)) == expect(lambda r, c=cls: r.reading.cls is c)
    combined = expect(lambda r: r.box_id == "box-c" and r.reading.cls is RecordClass.ALARM
                      and r.reading.ts >= T0 and r.reading.device == "dev0")
    assert combined and keys(walk(store, 1, box_id="box-c", cls=RecordClass.ALARM, since=T0,
                                  device="dev0")) == combined
    assert walk(store, 2, device="no-such-device") == []
    provision(store, "box-quiet")
    assert walk(store, 2, box_id="box-quiet") == []
    with pytest.raises(UnknownBox):
        store.readings_page(ReadingsQuery(box_id="no-such-box"))


@pytest.mark.parametrize("fields, message", [
    ({"limit": 0}, "limit"),
    ({"limit": True}, "limit"),
    ({"since": T0 + 1, "until": T0}, "until"),
    ({"since": -1.0}, "since"),
    ({"until": float("nan")}, "until"),
    ({"box_id": "a/b"}, "box_id"),
    ({"device": ""}, "device"),
    ({"point": "x" * 129}, "point"),
    ({"cls": "routine"}, "cls"),
    ({"after": (T0, "box-a", 0)}, "seq"),
    ({"after": (float("inf"), "box-a", 1)}, "ts"),
    ({"after": (T0, "", 1)}, "box_id"),
])
def test_queries_are_checked_on_creation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReadingsQuery(**fields)


@pytest.mark.parametrize("token", [
    "", "not base64!", "W10", encode_cursor(ReadingKey(T0, "box-a", 1))[:-3],
    "WzIsMSwiYiIsMV0",            # [2,1,"b",1]: another version
    "W3RydWUsMSwiYiIsMV0",        # [true,1,"b",1]
    "WzEsMSwiYi9jIiwxXQ",         # [1,1,"b/c",1]: no box id
    "WzEsLTEsImIiLDFd",           # [1,-1,"b",1]: before 1970
    "A" * 600,
])
def test_a_cursor_not_given_out_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="cursor is not one this server gave out"):
        decode_cursor(token)


def test_cursors_carry_the_exact_float() -> None:
    for ts in (T0, T0 + 0.1, 1e-7, 4_102_444_800.0, T0 + 0.123456789012):
        key = ReadingKey(ts, "box.A_1-x", 2**63 - 1)
        token = encode_cursor(key)
        assert decode_cursor(token) == key and decode_cursor(token).ts == ts
        assert token.isascii() and "=" not in token and "/" not in token and "+" not in token


def test_an_older_sqlite_file_gets_the_time_index_with_its_readings(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = SqliteStore(path)
    provision(old, "box-a")
    old.ingest("box-a", [reading(s, T0 + 10 - s) for s in range(1, 11)])
    old.close()
    with sqlite3.connect(path) as conn:   # as a server before migration 0003 left it
        conn.execute("DROP INDEX readings_by_time")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0003_readings_by_time'")
    conn.close()
    store = SqliteStore(path)
    try:
        assert store.migrations_applied == ["0003_readings_by_time"]
        plan = store._db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM readings WHERE +box_id = ? AND (ts, box_id, seq) > (?, ?, ?)"
            " ORDER BY ts, box_id, seq LIMIT 5", ("box-a", T0, "box-a", 1)).fetchall()
        assert "USING INDEX readings_by_time" in str(plan) and "TEMP B-TREE" not in str(plan)
        assert [k.seq for k in keys(walk(store, 3, box_id="box-a"))] == list(range(10, 0, -1))
    finally:
        store.close()
