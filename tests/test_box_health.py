"""Health figures with every check-in (core.box_health): the box builds them, the fleet keeps the
latest per box (fleet_server.box_health) and the alert rules act on them (disk, unsent backlog,
device offline), on both backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pg_support import BOTH_BACKENDS
from rollout_support import provision

from agent.health import health_header
from core.box_health import MAX_DEVICES, BoxHealthReport
from fleet_server.alert_jobs import AlertRulesJob
from fleet_server.alert_rules import DEVICE_OFFLINE, DISK_FULL, UNSENT_BACKLOG, Thresholds
from fleet_server.alerts import AlertQuery
from fleet_server.box_health import HealthBook

NOW = 1_800_000_000.0


@given(st.floats(1.0, 1e10), st.integers(0, 2**40), st.none() | st.floats(0, 1e6), st.none() | st.floats(0, 100),
       st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True), st.none() | st.floats(0, 1e6),
                       max_size=MAX_DEVICES))
def test_the_header_round_trips(clock: float, depth: int, oldest: float | None, disk: float | None,
                                offline: dict[str, float | None]) -> None:
    sent = BoxHealthReport(clock, depth, oldest, disk, offline)
    got = BoxHealthReport.parse(sent.to_header())
    assert got.buffer_depth == depth and set(got.devices_offline) == set(offline)
    assert abs(got.clock - clock) <= 0.001 and (got.disk_used_pct is None) == (disk is None)


@pytest.mark.parametrize("body, field", [
    ({"buffer_depth": 1}, "clock"),
    ({"clock": NOW, "buffer_depth": -1}, "buffer_depth"),
    ({"clock": NOW, "buffer_depth": 1, "disk_used_pct": 140}, "disk_used_pct"),
    ({"clock": NOW, "buffer_depth": 1, "oldest_unsent_age_s": "old"}, "oldest_unsent_age_s"),
    ({"clock": NOW, "buffer_depth": 1, "devices_offline": {"rain-1": -5}}, "devices_offline.rain-1"),
    ({"clock": NOW, "buffer_depth": 1, "devices_offline": {f"d{i}": 1 for i in range(40)}}, "devices_offline"),
    ({"clock": NOW, "buffer_depth": 1, "mood": "fine"}, "mood"),
])
def test_a_bad_header_names_its_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BoxHealthReport.parse(json.dumps(body))


class _Devices:
    def status(self) -> dict[str, dict[str, Any]]:
        return {"rain-1": {"online": False, "last_success": NOW - 120}, "wx-1": {"online": True, "last_success": NOW},
                "gate": {"online": False, "last_success": None}}


class _Buffer:
    def stats(self) -> dict[str, Any]:
        return {"depth": 42, "oldest_unsent_ts": NOW - 300}


def test_the_box_reports_depth_backlog_disk_and_its_offline_devices(tmp_path: Path) -> None:
    report = BoxHealthReport.parse(health_header(_Devices(), _Buffer(), tmp_path, clock=lambda: NOW))
    assert (report.clock, report.buffer_depth, report.oldest_unsent_age_s) == (NOW, 42, 300.0)
    assert report.devices_offline == {"rain-1": 120.0, "gate": None}
    assert report.disk_used_pct is not None and 0 <= report.disk_used_pct <= 100


@BOTH_BACKENDS
def test_reports_feed_the_health_rules_and_the_alerts_resolve_when_the_box_recovers(store: Any) -> None:
    provision(store, 2)
    now = [NOW]
    book = HealthBook(store, clock=lambda: now[0])
    job = AlertRulesJob(store, Thresholds(silent_s=10**9, unsent_s=600, disk_pct=90, offline_s=60),
                        clock=lambda: now[0])

    def unresolved() -> set[tuple[str, str | None, str]]:
        return {(a.kind, a.box_id, a.subject) for a in store.alerts(AlertQuery(limit=1000))
                if a.resolved_at is None}

    async def run() -> None:
        book.note("b00000", BoxHealthReport(NOW, 900, 1200.0, 97.5, {"rain-1": 300.0}).to_header())
        book.note("b00001", BoxHealthReport(NOW, 0, None, 20.0, {}).to_header())
        book.note("b00001", "{not json")                       # dropped and counted, nothing else
        assert (book.received, book.malformed) == (2, 1)
        assert await book.flush() == 2
        await job.step()
        assert unresolved() == {(UNSENT_BACKLOG, "b00000", ""), (DISK_FULL, "b00000", ""),
                                (DEVICE_OFFLINE, "b00000", "rain-1")}
        now[0] += 60
        book.note("b00000", BoxHealthReport(NOW + 60, 0, None, 50.0, {}).to_header())
        await book.flush()
        await job.step()
        assert unresolved() == set()

    asyncio.run(run())


def test_a_check_in_carries_the_header_to_the_book(client: TestClient, store: Any) -> None:
    creds = provision(store, 1)
    header = BoxHealthReport(NOW, 7, None, 12.5, {}).to_header()
    r = client.get("/api/v1/boxes/b00000/checkin", headers={"Authorization": f"Bearer {creds['b00000']}",
                                                             "X-Quanedge-Health": header})
    assert r.status_code == 200
    r = client.get("/api/v1/boxes/b00000/checkin", headers={"Authorization": f"Bearer {creds['b00000']}",
                                                             "X-Quanedge-Health": "garbage"})
    assert r.status_code == 200                                   # health never stops a check-in
    book: HealthBook = client.app.state.health  # type: ignore[attr-defined]
    assert (book.received, book.malformed) == (1, 1)
    asyncio.run(book.flush())
    ((box_id, _, report),) = store.box_health(0.0)
    assert (box_id, report.buffer_depth, report.disk_used_pct) == ("b00000", 7, 12.5)
