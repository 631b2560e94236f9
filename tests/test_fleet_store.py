"""The SQLite Store backend: schema/migrations, hashed secrets, enrollment rules, exactly-once ingest."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_support import BOTH_BACKENDS
from test_fleet_helpers import Clock, dump_text

from core.reading import Quality, Reading, RecordClass
from fleet_server.errors import AdmissionRequired, EnrollmentRefused, StoreError, UnknownBox
from fleet_server.store.base import IngestResult, Store, hash_secret
from fleet_server.store.sqlite import SqliteStore
from fleet_server.store.sqlite_schema import MIGRATIONS


def enrolled(store: SqliteStore, box_id: str = "box-1", hardware: str = "hw-1") -> str:
    token = store.create_enrollment_token(60, 1, "test")
    return store.enroll(token, box_id, hardware, "site", "0.1.0", ["t"])


def batch(first: int, count: int, point: str = "air_temp") -> list[Reading]:
    return [
        Reading("rs1", point, float(seq), "degC", 1_700_000_000.0 + seq, seq=seq)
        for seq in range(first, first + count)
    ]


@BOTH_BACKENDS
def test_sqlite_store_satisfies_the_protocol(store: SqliteStore) -> None:
    assert isinstance(store, Store)


def test_migrations_are_named_applied_once_and_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    first = SqliteStore(path)
    assert first.migrations_applied == ["0001_enrollment_and_boxes", "0002_readings", "0003_readings_by_time"]
    first.close()
    again = SqliteStore(path)
    assert again.migrations_applied == []
    again.close()
    conn = sqlite3.connect(path)
    try:
        from sqlite_utils import Database

        db = Database(conn, execute_plugins=False)
        assert [m.name for m in MIGRATIONS.applied(db)] == [
            "0001_enrollment_and_boxes", "0002_readings", "0003_readings_by_time"]
        assert MIGRATIONS.pending(db) == []
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@BOTH_BACKENDS
def test_secrets_are_stored_only_as_sha256_hashes(tmp_path: Path, store: SqliteStore) -> None:
    token = store.create_enrollment_token(60, 1, "")
    credential = store.enroll(token, "box-1", "hw-1", "", "", [])
    assert len(token) >= 43 and len(credential) >= 43  # token_urlsafe(32)
    dump = dump_text(store)
    assert token not in dump and credential not in dump
    assert hash_secret(token) in dump and hash_secret(credential) in dump


@BOTH_BACKENDS
def test_enrollment_refusals_change_nothing(store: SqliteStore, clock: Clock) -> None:
    with pytest.raises(EnrollmentRefused) as info:
        store.enroll("no-such-token", "b1", "hw", "", "", [])
    assert info.value.code == "unknown_token"

    expiring = store.create_enrollment_token(10, 5, "")
    clock.now += 10
    with pytest.raises(EnrollmentRefused) as info:
        store.enroll(expiring, "b1", "hw", "", "", [])
    assert info.value.code == "expired_token"

    once = store.create_enrollment_token(60, 1, "")
    store.enroll(once, "b1", "hw-1", "", "", [])
    with pytest.raises(EnrollmentRefused) as info:
        store.enroll(once, "b2", "hw-2", "", "", [])
    assert info.value.code == "token_used_up"

    twice = store.create_enrollment_token(60, 1, "")
    with pytest.raises(AdmissionRequired):  # an existing id needs its credential or an admin
        store.enroll(twice, "b1", "hw-OTHER", "", "", [])
    assert [b.box_id for b in store.list_boxes()] == ["b1"]
    assert store.get_box("b1").hardware == "hw-1"  # type: ignore[union-attr]
    store.enroll(twice, "b2", "hw-2", "", "", [])  # the refused attempt did not spend the token


@pytest.mark.parametrize("args, word", [
    (("bad/id", "hw", "", "", []), "box_id"),
    (("b1", "", "", "", []), "hardware"),
    (("b1", "hw", None, "", []), "site"),
    (("b1", "hw", "", "", "tags-as-a-string"), "tags"),
    (("b1", "hw", "", "", [3]), "tags"),
])
@BOTH_BACKENDS
def test_enroll_refuses_bad_arguments_without_spending_the_token(store: SqliteStore, args: tuple, word: str) -> None:
    token = store.create_enrollment_token(60, 1, "")
    with pytest.raises(ValueError, match=word):
        store.enroll(token, *args)
    store.enroll(token, "b1", "hw", "", "", [])


@pytest.mark.parametrize("ttl_s, max_uses", [(0, 1), (-1, 1), (60, 0), (60, 1.0), (True, 1)])
@BOTH_BACKENDS
def test_token_arguments_are_checked(store: SqliteStore, ttl_s: float, max_uses: int) -> None:
    with pytest.raises(ValueError):
        store.create_enrollment_token(ttl_s, max_uses, "")


@BOTH_BACKENDS
def test_credential_lookup_and_rotation(store: SqliteStore) -> None:
    old = enrolled(store)
    assert store.box_for_credential(old).box_id == "box-1"  # type: ignore[union-attr]
    token = store.create_enrollment_token(60, 1, "test")
    with pytest.raises(AdmissionRequired):  # not even the same hardware takes an id over
        store.enroll(token, "box-1", "hw-1", "site", "0.1.0", ["t"])
    new = store.enroll(None, "box-1", "hw-1", "x", "0.2.0", [], credential=old)  # re-key
    assert store.box_for_credential(old) is None
    assert store.box_for_credential(new).box_id == "box-1"  # type: ignore[union-attr]
    assert store.box_for_credential("") is None


@BOTH_BACKENDS
def test_ingest_counts_new_and_duplicate_rows(store: SqliteStore, clock: Clock) -> None:
    enrolled(store)
    assert store.ingest("box-1", batch(1, 10)) == IngestResult(accepted=10, duplicates=0, max_seq=10, first_seq=1,
                                                               last_seq=10, rows=10)
    assert store.ingest("box-1", []) == IngestResult(accepted=0, duplicates=0, max_seq=10)
    clock.now += 5
    result = store.ingest("box-1", batch(5, 10))
    assert (result.accepted, result.duplicates, result.max_seq) == (4, 6, 14)
    box = store.get_box("box-1")
    assert box is not None and (box.max_seq, box.last_seen) == (14, clock.now)
    # A re-sent row inside one batch is a duplicate too.
    result = store.ingest("box-1", batch(20, 1) + batch(20, 1))
    assert (result.accepted, result.duplicates) == (1, 1)


@BOTH_BACKENDS
def test_late_old_batch_never_lowers_max_seq(store: SqliteStore) -> None:
    enrolled(store)
    store.ingest("box-1", batch(100, 5))
    assert store.ingest("box-1", batch(1, 5)).max_seq == 104
    assert [r.seq for r in store.readings("box-1", limit=100)] == [1, 2, 3, 4, 5, 100, 101, 102, 103, 104]


@BOTH_BACKENDS
def test_ingest_for_unknown_box_stores_nothing(store: SqliteStore) -> None:
    with pytest.raises(UnknownBox):
        store.ingest("ghost", batch(1, 3))
    enrolled(store, "ghost")
    assert store.readings("ghost") == []


@BOTH_BACKENDS
def test_ingest_is_one_transaction_per_batch(store: SqliteStore) -> None:
    enrolled(store)
    # Row 3 violates NOT NULL deep inside the executemany: rows 1-2 must be rolled back too.
    broken = batch(1, 2) + [Reading(None, "p", 1.0, "C", 1.0, seq=3)] + batch(4, 2)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.ingest("box-1", broken)
    assert store.readings("box-1") == []
    assert store.get_box("box-1").max_seq == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("reading", [
    Reading("d", "p", 1.0, "C", 1.0),
    Reading("d", "p", 1.0, "C", 1.0, seq=2**63),
    Reading("d", "p", 1.0, "C", 1.0, seq=0),
])
@BOTH_BACKENDS
def test_ingest_refuses_rows_without_a_storable_seq(store: SqliteStore, reading: Reading) -> None:
    enrolled(store)
    with pytest.raises(ValueError, match="seq"):
        store.ingest("box-1", batch(1, 2) + [reading])
    assert store.readings("box-1") == []


@BOTH_BACKENDS
def test_readings_page_and_filter(store: SqliteStore) -> None:
    enrolled(store)
    store.ingest("box-1", batch(1, 5, "a") + batch(6, 5, "b"))
    assert [r.seq for r in store.readings("box-1", after_seq=3, limit=4)] == [4, 5, 6, 7]
    assert [r.seq for r in store.readings("box-1", point="b", limit=3)] == [6, 7, 8]
    assert [r.seq for r in store.readings("box-1", device="rs1", point="a", after_seq=4)] == [5]
    assert store.readings("box-1", device="nope") == []
    with pytest.raises(ValueError, match="limit"):
        store.readings("box-1", limit=0)
    with pytest.raises(UnknownBox):
        store.readings("ghost")


@BOTH_BACKENDS
def test_box_status_is_applied_in_arrival_order(store: SqliteStore, clock: Clock) -> None:
    enrolled(store)
    store.set_box_status("box-1", True, 100.0)
    box = store.get_box("box-1")
    assert box is not None and (box.online, box.status_ts, box.last_seen) == (True, 100.0, clock.now)
    # A last will is stamped at connect time, before the "online" that followed: still applied.
    store.set_box_status("box-1", False, 99.0)
    box = store.get_box("box-1")
    assert box is not None and (box.online, box.status_ts) == (False, 99.0)
    with pytest.raises(UnknownBox):
        store.set_box_status("ghost", True, 1.0)


@BOTH_BACKENDS
def test_list_and_count_boxes(store: SqliteStore) -> None:
    for box_id in ("c", "a", "b"):
        enrolled(store, box_id, f"hw-{box_id}")
    assert [b.box_id for b in store.list_boxes()] == ["a", "b", "c"]
    assert store.count_boxes() == 3
    assert store.get_box("zzz") is None


@BOTH_BACKENDS
def test_closed_store_raises_store_error(store: SqliteStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.list_boxes()


def test_unopenable_path_raises_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(tmp_path / "no-such-dir" / "fleet.db")


@BOTH_BACKENDS
def test_concurrent_overlapping_batches_store_each_row_once(store: SqliteStore) -> None:
    enrolled(store)
    results = []
    lock = threading.Lock()

    def worker(first: int) -> None:
        for start in range(first, 400, 50):
            r = store.ingest("box-1", batch(start, 100))  # every row is sent by two threads
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(first,)) for first in (1, 1, 51, 51)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = [r.seq for r in store.readings("box-1", limit=10_000)]
    assert stored == list(range(1, 451))
    assert sum(r.accepted for r in results) == 450
    assert sum(r.accepted + r.duplicates for r in results) == 100 * len(results)


readings_strategy = st.builds(
    Reading,
    device=st.text(min_size=1, max_size=12),
    point=st.text(min_size=1, max_size=12),
    value=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    unit=st.text(max_size=6),
    ts=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    quality=st.sampled_from(list(Quality)) | st.integers(0, 127).map(Quality),
    cls=st.sampled_from(list(RecordClass)),
    text=st.none() | st.text(max_size=40),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(readings=st.lists(readings_strategy, min_size=1, max_size=20))
def test_stored_readings_read_back_identical(tmp_path: Path, readings: list[Reading]) -> None:
    store = SqliteStore(tmp_path / f"rt-{uuid.uuid4().hex}.db")
    try:
        enrolled(store)
        numbered = [r.with_seq(i + 1) for i, r in enumerate(readings)]
        store.ingest("box-1", numbered)
        assert store.readings("box-1", limit=100) == numbered
    finally:
        store.close()
