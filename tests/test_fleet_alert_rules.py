"""The alert rules as pure functions (fleet_server.alert_rules): facts in, the alerts that should
be unresolved out; and `reconcile`, which turns that into what to raise and what to resolve."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet_server.alert_rules import (
    ALARM_READING,
    BOX_SILENT,
    DEVICE_OFFLINE,
    DISK_FULL,
    UNSENT_BACKLOG,
    AlarmPoint,
    BoxHealth,
    BoxSeen,
    RuleFacts,
    Thresholds,
    alarm_reading,
    box_silent,
    device_offline,
    disk_full,
    evaluate,
    reconcile,
    unsent_backlog,
)
from fleet_server.alerts import Alert, AlertKey

NOW = 1_800_000_000.0
times = st.floats(min_value=NOW - 10 * 86400, max_value=NOW, allow_nan=False)
boxes = st.lists(st.builds(BoxSeen, st.from_regex(r"b[0-9]{1,3}", fullmatch=True), times,
                           st.none() | times), unique_by=lambda b: b.box_id, max_size=20)


@given(boxes, st.floats(min_value=1, max_value=86400))
def test_box_silent_is_exactly_the_boxes_unheard_for_the_threshold(seen: list[BoxSeen], silent_s: float) -> None:
    wanted = box_silent(seen, NOW, silent_s)
    for box in seen:
        since = box.enrolled_at if box.last_seen is None else box.last_seen
        assert (AlertKey(BOX_SILENT, box.box_id) in wanted) == (NOW - since >= silent_s)
    assert all(key.subject == "" for key in wanted)


def test_box_silent_at_the_boundary() -> None:
    seen = [BoxSeen("a", NOW - 9999, NOW - 900), BoxSeen("b", NOW - 9999, NOW - 899.5), BoxSeen("c", NOW - 900, None)]
    assert sorted(k.box_id or "" for k in box_silent(seen, NOW, 900)) == ["a", "c"]
    assert box_silent(seen, NOW, 900)[AlertKey(BOX_SILENT, "a")] == {"last_seen": NOW - 900, "silent_s": 900.0}


points = st.builds(AlarmPoint, st.sampled_from(["b1", "b2"]), st.sampled_from(["gauge", "gate"]),
                   st.sampled_from(["rain", "forced", "fault"]), times, st.integers(1, 10**6), st.none() | st.text(),
                   st.booleans())


@given(st.lists(points, unique_by=lambda p: (p.box_id, p.device, p.point)), st.floats(min_value=1, max_value=86400))
def test_alarm_reading_open_while_not_cleared_and_not_quiet(alarms: list[AlarmPoint], quiet_s: float) -> None:
    wanted = alarm_reading(alarms, NOW, quiet_s)
    for p in alarms:
        key = AlertKey(ALARM_READING, p.box_id, f"{p.device}/{p.point}")
        assert (key in wanted) == (not p.cleared and NOW - p.ts < quiet_s)
        if key in wanted:
            assert wanted[key] == {"device": p.device, "point": p.point, "ts": p.ts, "seq": p.seq, "text": p.text}


def test_health_rules_take_their_facts_as_input() -> None:
    health = [BoxHealth("b1", oldest_unsent=NOW - 1800, disk_used_pct=90.0, devices_last_ok={"rs1": NOW - 60}),
              BoxHealth("b2", oldest_unsent=NOW - 1799, disk_used_pct=90.5, devices_last_ok={"rs1": NOW - 900,
                                                                                               "rs2": NOW}),
              BoxHealth("b3")]
    assert set(unsent_backlog(health, NOW, 1800)) == {AlertKey(UNSENT_BACKLOG, "b1")}
    assert disk_full(health, 90.0) == {AlertKey(DISK_FULL, "b2"): {"used_pct": 90.5}}
    assert device_offline(health, NOW, 900) == {AlertKey(DEVICE_OFFLINE, "b2", "rs1"): {"device": "rs1",
                                                                                        "last_ok": NOW - 900}}
    wanted = evaluate(RuleFacts(health=tuple(health)), NOW, Thresholds(unsent_s=1800, disk_pct=90, offline_s=900))
    assert {k.kind for k in wanted} == {UNSENT_BACKLOG, DISK_FULL, DEVICE_OFFLINE}


def _alert(i: int, key: AlertKey) -> Alert:
    return Alert(i, key.box_id, key.kind, {}, NOW, subject=key.subject)


rule_keys = st.builds(AlertKey, st.sampled_from([BOX_SILENT, ALARM_READING]), st.sampled_from(["b1", "b2"]),
                      st.sampled_from(["", "gauge/rain"]))
any_keys = rule_keys | st.builds(AlertKey, st.just("seq_gap"), st.sampled_from(["b1", "b2"]), st.just("1..9"))


@given(st.sets(rule_keys), st.sets(any_keys))
def test_reconcile_raises_the_new_and_resolves_the_gone_of_the_rules_kinds_only(
        want: set[AlertKey], have: set[AlertKey]) -> None:
    wanted = {k: {"k": k.kind} for k in want}
    to_raise, to_resolve = reconcile(wanted, [_alert(i, k) for i, k in enumerate(have)])
    assert set(to_raise) == want - have and all(to_raise[k] == wanted[k] for k in to_raise)
    assert set(to_resolve) == {k for k in have - want if k.kind != "seq_gap"}   # never another kind's alert
    after = (have - set(to_resolve)) | set(to_raise)                              # applied: nothing left to do
    assert reconcile(wanted, [_alert(i, k) for i, k in enumerate(after)]) == ({}, [])


def test_health_alerts_are_left_alone_until_boxes_report_health() -> None:
    """Without health figures the health rules decide nothing: an unresolved disk_full alert raised
    by other means stays; once figures are fed, one that no longer holds is resolved."""
    disk = AlertKey(DISK_FULL, "b1")
    unresolved = [_alert(1, disk)]
    unfed = RuleFacts()
    assert unfed.kinds() == (BOX_SILENT, ALARM_READING)
    assert reconcile(evaluate(unfed, NOW, Thresholds()), unresolved, unfed.kinds()) == ({}, [])
    fed = RuleFacts(health=(BoxHealth("b1", disk_used_pct=40.0),), health_fed=True)
    assert reconcile(evaluate(fed, NOW, Thresholds()), unresolved, fed.kinds()) == ({}, [disk])
