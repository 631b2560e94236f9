"""Seq tracking and alerts in the SQLite store, on a real file: the state survives a reopen, gaps
are stored with their alert in the batch's transaction, dropped ranges count once, alerts ack."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import BOTH_BACKENDS
from test_fleet_helpers import Clock, open_store

from core.reading import Reading
from fleet_server.alerts import SEQ_GAP, AlertQuery, UnknownAlert
from fleet_server.errors import StoreError, UnknownBox
from fleet_server.seq_tracking import BUFFER_REPLACED, UNANNOUNCED, Gap, SeqReport, SeqState
from fleet_server.store import sql_seq
from fleet_server.store.sqlite import SqliteStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "fleet.db"


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[SqliteStore]:
    for s in open_store(tmp_path, clock, getattr(request, "param", "sqlite")):
        s.enroll(s.create_enrollment_token(60, 1, ""), "box-1", "hw", "site", "0.1.0", [])
        yield s


def batch(first: int, count: int) -> list[Reading]:
    return [Reading("rs1", "t", float(s), "degC", 1_700_000_000.0 + s, seq=s) for s in range(first, first + count)]


def state(store: SqliteStore, box_id: str = "box-1") -> SeqState:
    status = store.seq_status(box_id)
    return SeqState(status.contig, status.above, status.base, status.fresh)


def test_a_lost_batch_is_one_gap_stored_with_its_alert_and_survives_a_reopen(
        store: SqliteStore, path: Path, clock: Clock) -> None:
    base = 1_700_000_000_000_000
    first = store.ingest("box-1", batch(base, 10), SeqReport(low=base, base=base))
    assert (first.first_seq, first.last_seq, first.rows, first.gaps, first.seq_gaps) == (base, base + 9, 10, 0, ())
    store.ingest("box-1", batch(base + 10, 10), SeqReport(low=base + 10, base=base))
    clock.now += 1
    lost = store.ingest("box-1", batch(base + 30, 10), SeqReport(low=base + 30, base=base))   # 20..29 lost
    assert lost.gaps == 1 and lost.seq_gaps == (Gap(base + 20, base + 29, UNANNOUNCED),)
    [alert] = store.alerts(AlertQuery(kind=SEQ_GAP))
    assert (alert.box_id, alert.kind, alert.raised_at, alert.open) == ("box-1", SEQ_GAP, clock.now, True)
    assert alert.detail == {"first": base + 20, "last": base + 29, "missing": 10, "reason": UNANNOUNCED}
    store.close()
    again = SqliteStore(path, clock=clock)
    try:
        assert again.seq_migrations_applied == [] and again.alert_migrations_applied == []
        assert state(again) == SeqState(base + 39, (), base, True)
        status = again.seq_status("box-1")
        assert (status.gaps, status.gap_readings, status.gaps_by_reason) == (1, 10, {UNANNOUNCED: 10})
        assert status.updated_at == clock.now
        assert again.ingest("box-1", batch(base + 20, 10), SeqReport(low=base + 40, base=base)).gaps == 0  # late
        assert len(again.alerts(AlertQuery())) == 1
    finally:
        again.close()


def test_gap_state_and_readings_are_one_transaction(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.ingest("box-1", batch(1, 10), SeqReport(low=1, base=1))

    def broken(*args: object) -> int:
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setattr(sql_seq, "insert_alert", broken)
    with pytest.raises(StoreError):
        store.ingest("box-1", batch(21, 5), SeqReport(low=21, base=1))
    assert [r.seq for r in store.readings("box-1")] == list(range(1, 11))   # the batch was rolled back
    assert state(store) == SeqState(10, (), 1, True) and store.get_box("box-1").max_seq == 10  # type: ignore[union-attr]
    monkeypatch.undo()
    assert store.ingest("box-1", batch(21, 5), SeqReport(low=21, base=1)).seq_gaps == (Gap(11, 20, UNANNOUNCED),)


@BOTH_BACKENDS
def test_dropped_ranges_count_once_and_cover(store: SqliteStore) -> None:
    report = SeqReport(low=1, base=1, dropped=((11, 20, "disk_cap"), (21, 25, "ttl")))
    result = store.ingest("box-1", batch(1, 10), report)
    assert sorted(result.dropped) == [("disk_cap", 10), ("ttl", 5)]
    again = store.ingest("box-1", batch(26, 5), SeqReport(low=26, base=1, dropped=((11, 20, "disk_cap"),)))
    assert again.dropped == () and again.gaps == 0
    status = store.seq_status("box-1")
    assert (status.contig, status.dropped_ranges, status.dropped_readings) == (30, 2, 15)
    assert status.dropped_by_reason == {"disk_cap": 10, "ttl": 5}


def test_a_box_with_history_before_tracking_starts_at_its_first_low(store: SqliteStore, path: Path) -> None:
    store.ingest("box-1", batch(1, 10))
    with sqlite3.connect(path) as conn:   # as if the rows had been stored before tracking existed
        conn.execute("DELETE FROM box_seq")
    result = store.ingest("box-1", batch(500, 10), SeqReport(low=500, base=1))
    assert result.gaps == 0 and state(store) == SeqState(509, (), 1, False)
    # A box enrolled later is fresh: tracked from its base.
    store.enroll(store.create_enrollment_token(60, 1, ""), "box-2", "hw", "site", "0.1.0", [])
    result = store.ingest("box-2", batch(500, 10), SeqReport(low=500, base=1))
    assert result.seq_gaps == (Gap(1, 499, UNANNOUNCED),)


@BOTH_BACKENDS
def test_a_replaced_buffer_and_an_old_agent(store: SqliteStore) -> None:
    store.ingest("box-1", batch(1, 10), SeqReport(low=1, base=1))
    store.ingest("box-1", batch(21, 10))   # no fields: coverage only, 11..20 in flight
    assert state(store) == SeqState(10, ((21, 30),), 1, True)
    result = store.ingest("box-1", batch(1000, 5), SeqReport(low=1000, base=1000))
    assert result.seq_gaps == (Gap(11, 20, BUFFER_REPLACED),) and state(store) == SeqState(1004, (), 1000, True)


@BOTH_BACKENDS
def test_unknown_box_and_malformed_reports_change_nothing(store: SqliteStore) -> None:
    with pytest.raises(UnknownBox):
        store.ingest("ghost", batch(1, 1), SeqReport(low=1))
    with pytest.raises(UnknownBox):
        store.seq_status("ghost")
    for report in (SeqReport(low=0), SeqReport(base=2**63), SeqReport(low=1, base=2), SeqReport(low=True),
                   SeqReport(dropped=((5, 4, "ttl"),)), SeqReport(dropped=((1, 2, "Bad"),))):
        with pytest.raises(ValueError):
            store.ingest("box-1", batch(1, 1), report)
    assert store.readings("box-1") == [] and store.seq_status("box-1").contig is None


@BOTH_BACKENDS
def test_alerts_filter_page_and_ack_once(store: SqliteStore, clock: Clock) -> None:
    ids = [store.raise_alert(box, kind, {"n": i}, clock.now + i)
           for i, (box, kind) in enumerate([("box-1", SEQ_GAP), ("box-2", SEQ_GAP), ("box-1", "other"), (None, "x")])]
    assert ids == sorted(ids)
    assert [a.id for a in store.alerts(AlertQuery(box_id="box-1"))] == [ids[0], ids[2]]
    assert [a.id for a in store.alerts(AlertQuery(kind=SEQ_GAP, after_id=ids[0]))] == [ids[1]]
    assert [a.id for a in store.alerts(AlertQuery(limit=2))] == ids[:2]
    acked = store.ack_alert(ids[1], "olga", clock.now + 10)
    assert (acked.acked_by, acked.acked_at, acked.open) == ("olga", clock.now + 10, False)
    assert store.ack_alert(ids[1], "peter", clock.now + 20) == acked   # the first acknowledgement stays
    assert [a.id for a in store.alerts(AlertQuery(open=True))] == [ids[0], ids[2], ids[3]]
    assert [a.id for a in store.alerts(AlertQuery(open=False))] == [ids[1]]
    assert store.alerts(AlertQuery(after_id=ids[3])) == []
    with pytest.raises(UnknownAlert):
        store.ack_alert(ids[3] + 1, "olga", clock.now)
