"""Alert dedup, lifecycle and outbox in the store, on a real SQLite file and on PostgreSQL: one
unresolved alert per key, open -> acknowledged -> resolved, a resolved key raised again is a new
alert, every state change queued for the webhook in order, the outbox bounded, and the rules'
facts read from real readings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pg_support import BOTH_BACKENDS
from sqlite_utils import Database
from test_fleet_helpers import Clock

from core.reading import Reading, RecordClass
from fleet_server.alert_rules import AlarmPoint, BoxSeen
from fleet_server.alerts import SEQ_GAP, AlertKey, AlertQuery
from fleet_server.seq_tracking import SeqReport
from fleet_server.store.sql_alerts import ALERT_MIGRATIONS
from fleet_server.store.sqlite import SqliteStore

pytestmark = BOTH_BACKENDS

T0 = 1_700_000_000.0


def events(store: SqliteStore) -> list[tuple[int, str, str]]:
    """(alert id, event, state in the body) of every queued webhook event, oldest first."""
    out = []
    for entry in store.alert_outbox(1000):
        body = json.loads(entry.body)
        assert body["event"] == entry.event and body["alert"]["id"] == entry.alert_id
        out.append((entry.alert_id, entry.event, body["alert"]["state"]))
    return out


def test_raising_a_key_twice_keeps_one_alert_and_counts(store: SqliteStore) -> None:
    first = store.raise_alert("box-1", "box_silent", {"n": 1}, T0)
    again = store.raise_alert("box-1", "box_silent", {"n": 2}, T0 + 60)
    other_subject = store.raise_alert("box-1", "box_silent", {"n": 3}, T0 + 61, subject="x")
    no_box = store.raise_alert(None, "box_silent", {"n": 4}, T0 + 62)
    no_box_again = store.raise_alert(None, "box_silent", {"n": 5}, T0 + 63)
    assert first == again and len({first, other_subject, no_box}) == 3 and no_box == no_box_again
    alert = store.alerts(AlertQuery(box_id="box-1", kind="box_silent"))[0]
    assert (alert.count, alert.raised_at, alert.last_raised_at, alert.detail) == (2, T0, T0 + 60, {"n": 2})
    assert (alert.state, alert.subject) == ("open", "")
    # only a raise that made a row is an event
    assert events(store) == [(first, "raised", "open"), (other_subject, "raised", "open"), (no_box, "raised", "open")]


def test_open_acknowledged_resolved_and_raised_again_as_a_new_alert(store: SqliteStore) -> None:
    key = AlertKey("alarm_reading", "box-1", "rain/heavy")
    alert_id = store.raise_alert(key.box_id, key.kind, {}, T0, subject=key.subject)
    acked = store.ack_alert(alert_id, "otto", T0 + 10)
    assert (acked.state, acked.acked_by, acked.open) == ("acknowledged", "otto", False)
    # still unresolved: a raise dedupes onto the acknowledged alert
    assert store.raise_alert(key.box_id, key.kind, {}, T0 + 20, subject=key.subject) == alert_id
    resolved = store.resolve_alert(key, T0 + 30)
    assert resolved is not None
    assert (resolved.id, resolved.state, resolved.resolved_at) == (alert_id, "resolved", T0 + 30)
    assert store.resolve_alert(key, T0 + 31) is None                      # nothing unresolved left
    assert store.ack_alert(alert_id, "peter", T0 + 32) == resolved         # a resolved alert stays as it was
    new_id = store.raise_alert(key.box_id, key.kind, {}, T0 + 40, subject=key.subject)
    assert new_id > alert_id
    assert [a.id for a in store.alerts(AlertQuery(state="resolved"))] == [alert_id]
    assert [a.id for a in store.alerts(AlertQuery(state="open"))] == [new_id]
    assert store.alerts(AlertQuery(state="acknowledged")) == []
    assert [a.id for a in store.alerts(AlertQuery(open=False))] == [alert_id]
    assert [a.key for a in store.unresolved_alerts(["alarm_reading", "other"])] == [key]
    assert events(store) == [(alert_id, "raised", "open"), (alert_id, "acknowledged", "acknowledged"),
                             (alert_id, "resolved", "resolved"), (new_id, "raised", "open")]


def test_a_resolved_open_alert_skips_acknowledged(store: SqliteStore) -> None:
    alert_id = store.raise_alert("box-2", "box_silent", {}, T0)
    assert store.apply_alert_changes([(AlertKey("disk_full", "box-2"), {"used_pct": 95})],
                                     [AlertKey("box_silent", "box-2"), AlertKey("box_silent", "nobody")],
                                     T0 + 5) == (1, 1)
    [silent] = store.alerts(AlertQuery(kind="box_silent"))
    assert (silent.id, silent.state, silent.acked_at) == (alert_id, "resolved", None)


def test_each_seq_gap_stays_its_own_alert(store: SqliteStore, clock: Clock) -> None:
    store.enroll(store.create_enrollment_token(60, 1, ""), "box-1", "hw", "site", "0.1.0", [])

    def batch(first: int, count: int) -> list[Reading]:
        return [Reading("rs1", "t", 1.0, "degC", T0 + s, seq=s) for s in range(first, first + count)]

    store.ingest("box-1", batch(1, 5), SeqReport(low=1, base=1))
    store.ingest("box-1", batch(11, 5), SeqReport(low=11, base=1))   # 6..10 lost
    store.ingest("box-1", batch(21, 5), SeqReport(low=21, base=1))   # 16..20 lost
    gaps = store.alerts(AlertQuery(kind=SEQ_GAP))
    assert [(a.subject, a.state, a.count) for a in gaps] == [("6..10", "open", 1), ("16..20", "open", 1)]
    assert [e[1] for e in events(store)] == ["raised", "raised"]


def test_outbox_delete_and_trim_keep_the_newest(store: SqliteStore) -> None:
    ids = [store.raise_alert(f"box-{i}", "box_silent", {}, T0 + i) for i in range(5)]
    assert store.alert_outbox_depth() == 5
    first = store.alert_outbox(1)[0]
    store.delete_alert_outbox(first.id)
    assert [e.alert_id for e in store.alert_outbox(10)] == ids[1:]
    assert store.trim_alert_outbox(10) == 0
    assert store.trim_alert_outbox(2) == 2
    assert [e.alert_id for e in store.alert_outbox(10)] == ids[3:]
    assert store.trim_alert_outbox(0) == 2 and store.alert_outbox_depth() == 0


def test_rule_facts_from_real_readings(store: SqliteStore, clock: Clock) -> None:
    for box in ("box-1", "box-2", "box-3"):
        store.enroll(store.create_enrollment_token(60, 1, ""), box, "hw", "site", "0.1.0", [])
    store.revoke_box("box-3")
    alarm, routine = RecordClass.ALARM, RecordClass.ROUTINE
    store.ingest("box-1", [
        Reading("gauge", "rain", 1.0, "", T0 - 7200, cls=alarm, text="old", seq=1),      # before the window
        Reading("gauge", "rain", 1.0, "", T0 + 1, cls=alarm, text="heavy rain", seq=2),
        Reading("gate", "forced", 1.0, "", T0 + 2, cls=alarm, text="gate forced", seq=3),
        Reading("gate", "forced", 0.0, "", T0 + 3, cls=routine, seq=4),                     # clears the gate
        Reading("gauge", "level", 2.0, "m", T0 + 4, cls=routine, seq=5),                    # another point
    ], SeqReport(low=1, base=1))
    clock.now += 100
    facts = store.alert_rule_facts(T0 - 60)
    seen = {b.box_id: b for b in facts.boxes}
    assert seen == {"box-1": BoxSeen("box-1", T0, T0), "box-2": BoxSeen("box-2", T0, None)}  # box-3 revoked
    assert facts.alarms == (AlarmPoint("box-1", "gate", "forced", T0 + 2, 3, "gate forced", True),
                            AlarmPoint("box-1", "gauge", "rain", T0 + 1, 2, "heavy rain", False))
    assert facts.health == ()


def test_sqlite_migration_keeps_older_alerts_each_their_own(store: SqliteStore, tmp_path: Path) -> None:
    if not isinstance(store, SqliteStore):
        pytest.skip("SQLite's own migration set (PostgreSQL's migration 7 is tested by test_fleet_pg_schema)")
    path = tmp_path / "old.db"
    db = Database(path)
    ALERT_MIGRATIONS.apply(db, stop_before="0002_alert_lifecycle_and_outbox")
    db.conn.executemany("INSERT INTO alerts (box_id, kind, detail, raised_at) VALUES ('b', 'seq_gap', '{}', ?)",
                   [(T0,), (T0 + 1,)])   # two unacknowledged alerts with one (kind, box): legal before dedup
    db.conn.commit()
    db.close()
    store = SqliteStore(path)
    try:
        old = store.alerts(AlertQuery())
        assert [(a.subject, a.state, a.last_raised_at) for a in old] == [("#1", "open", T0), ("#2", "open", T0 + 1)]
        assert store.raise_alert("b", "seq_gap", {}, T0 + 2) == 3
    finally:
        store.close()
