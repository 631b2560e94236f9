"""Alert webhook delivery end to end (issue 12): an alert reaches a real local HTTP receiver, is
retried while that receiver answers 503 or refuses connections, and is resolved when the condition
clears, the resolved event delivered too. Real SQLite file and PostgreSQL, real HTTP (httpx to an
`http.server` on a free port), an injectable clock instead of minutes of sleep."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest
from pg_support import BOTH_BACKENDS
from prometheus_client import CollectorRegistry
from test_fleet_helpers import ADMIN, Clock, TestClient

from core.errors import ConfigError
from core.reading import Reading
from fleet_server.alert_jobs import AlertRulesJob
from fleet_server.alert_rules import BOX_SILENT, Thresholds
from fleet_server.alert_webhook import WebhookDelivery
from fleet_server.alerts import AlertQuery
from fleet_server.app import create_app
from fleet_server.seq_tracking import SeqReport
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port


class Receiver:
    """A webhook receiver on 127.0.0.1:`port`: records every POST (status answered, JSON body).
    `status` is what it answers; `stop()` closes the socket (connections refused), `start()`
    listens again on the same port."""

    def __init__(self, port: int) -> None:
        self.port, self.status = port, 200
        self.posts: list[tuple[int, dict[str, Any]]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/alerts"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/hooks/alerts" and self.headers["Content-Type"] == "application/json"
                receiver.posts.append((receiver.status, body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def delivered(self) -> list[tuple[str, str, str]]:
        """(event, kind, state) of each event answered 2xx."""
        return [(b["event"], b["alert"]["kind"], b["alert"]["state"]) for s, b in self.posts if 200 <= s < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    r.start()
    yield r
    r.stop()


def checkin(store: SqliteStore, seq: int) -> None:
    store.ingest("box-1", [Reading("rs1", "t", 1.0, "degC", 1_700_000_000.0 + seq, seq=seq)],
                 SeqReport(low=1, base=1))


@BOTH_BACKENDS
def test_alert_delivered_retried_while_the_receiver_is_down_and_resolved(
        store: SqliteStore, clock: Clock, receiver: Receiver) -> None:
    store.enroll(store.create_enrollment_token(60, 1, ""), "box-1", "hw", "site", "0.1.0", [])
    checkin(store, 1)
    registry = CollectorRegistry()
    rules = AlertRulesJob(store, Thresholds(silent_s=900), clock=clock)
    delivery = WebhookDelivery(store, receiver.url, registry=registry, clock=clock, base_s=1.0, cap_s=4.0,
                               timeout_s=5.0)

    def value(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    async def scenario() -> None:
        await rules.step()
        await delivery.step()
        assert receiver.posts == []                                   # heard from just now: nothing
        clock.now += 901                                              # 15 minutes and a second of silence
        await rules.step()
        await rules.step()                                            # a second round raises nothing more
        await delivery.step()
        assert receiver.delivered() == [("raised", BOX_SILENT, "open")]
        [raised] = [b["alert"] for _, b in receiver.posts]
        assert (raised["box_id"], raised["detail"]["last_seen"]) == ("box-1", clock.now - 901)

        receiver.status = 503                                         # the receiver goes down ...
        checkin(store, 2)                                             # ... while the box is heard from again
        await rules.step()
        [alert] = store.alerts(AlertQuery(kind=BOX_SILENT))
        assert (alert.id, alert.state) == (raised["id"], "resolved")
        await delivery.step()                                         # 503: failed, backs off 1 s
        await delivery.step()                                         # within the backoff: no attempt
        assert [s for s, _ in receiver.posts] == [200, 503]
        clock.now += 1
        await delivery.step()                                         # 503 again: backs off 2 s
        receiver.stop()                                               # now connections are refused
        clock.now += 1
        await delivery.step()                                         # still backing off
        clock.now += 1
        await delivery.step()                                         # refused: backs off 4 s
        assert [s for s, _ in receiver.posts] == [200, 503, 503] and value(
            "quanedge_fleet_alert_webhook_failures_total") == 3
        assert value("quanedge_fleet_alert_outbox_depth") == 1
        receiver.status = 200
        receiver.start()                                              # back, on the same port
        clock.now += 3.9
        await delivery.step()
        assert len(receiver.posts) == 3                               # the backoff is honoured
        clock.now += 0.1
        await delivery.step()
        assert receiver.delivered() == [("raised", BOX_SILENT, "open"), ("resolved", BOX_SILENT, "resolved")]
        assert receiver.posts[-1][1]["alert"]["id"] == raised["id"]
        assert value("quanedge_fleet_alert_webhook_delivered_total") == 2
        assert value("quanedge_fleet_alert_outbox_depth") == 0 and store.alert_outbox(10) == []

    anyio.run(scenario)


@BOTH_BACKENDS
def test_events_go_out_in_order_and_the_outbox_is_bounded(store: SqliteStore, clock: Clock,
                                                          receiver: Receiver) -> None:
    ids = [store.raise_alert(f"box-{i}", "disk_full", {"i": i}, clock.now) for i in range(5)]
    store.ack_alert(ids[0], "otto", clock.now)
    delivery = WebhookDelivery(store, receiver.url, clock=clock, max_outbox=4, batch=2)
    anyio.run(delivery.step)   # 6 events queued, the 2 oldest dropped, the 4 newest delivered in order
    assert [(b["event"], b["alert"]["id"]) for _, b in receiver.posts] == [
        ("raised", ids[2]), ("raised", ids[3]), ("raised", ids[4]), ("acknowledged", ids[0])]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@BOTH_BACKENDS
def test_the_app_runs_both_jobs_under_leases(store: SqliteStore, clock: Clock, receiver: Receiver,
                                             tmp_path: Path) -> None:
    store.enroll(store.create_enrollment_token(60, 1, ""), "box-1", "hw", "site", "0.1.0", [])
    clock.now += 3600
    settings = ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, alert_webhook=receiver.url,
                              alert_rules_s=0.2, replica_id="r1")
    with TestClient(create_app(settings, store, clock=clock)) as client:
        wait_for(lambda: receiver.delivered() == [("raised", BOX_SILENT, "open")])
        health = client.get("/healthz").json()
        assert {"alert-rules", "alert-webhook"} <= set(health["leases"]) and health["leases"]["alert-rules"][
            "leader"]
        assert {"alert-rules", "alert-webhook"} <= set(health["tasks"])
        [alert] = client.get("/api/v1/alerts?state=open", headers={"Authorization": f"Bearer {ADMIN}"}).json()[
            "alerts"]
        acked = client.post(f"/api/v1/alerts/{alert['id']}/ack", headers={"Authorization": f"Bearer {ADMIN}"})
        assert acked.json()["state"] == "acknowledged"
        wait_for(lambda: len(receiver.delivered()) == 2)
        checkin(store, 1)
        wait_for(lambda: len(receiver.delivered()) == 3)
        assert receiver.delivered()[1:] == [("acknowledged", BOX_SILENT, "acknowledged"),
                                            ("resolved", BOX_SILENT, "resolved")]
        assert client.get("/api/v1/alerts?state=resolved", headers={"Authorization": f"Bearer {ADMIN}"}).json()[
            "alerts"][0]["id"] == alert["id"]


@pytest.mark.parametrize("url", ["ftp://example.org/x", "example.org/hook", "http://", "http://a b/"])
def test_a_bad_webhook_url_is_refused_at_load(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--alert-webhook") as err:
        ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, alert_webhook=url)
    assert "alert_webhook" in str(err.value)


def test_alert_settings_become_the_rules_thresholds(tmp_path: Path) -> None:
    settings = ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, alert_silent_minutes=5,
                              alert_alarm_quiet_minutes=0.5, alert_webhook="https://hooks.example.org/q")
    assert settings.alert_thresholds == Thresholds(silent_s=300, alarm_quiet_s=30, unsent_s=1800, disk_pct=90,
                                                   offline_s=900)
    with pytest.raises(ConfigError, match="--alert-silent-minutes"):
        ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, alert_silent_minutes=0)


def test_serve_refuses_a_bad_webhook_naming_the_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from quanedge.cli import build_app

    args = ["fleet", "serve", "--db", str(tmp_path / "fleet.db"), "--alert-webhook", "ftp://example.org/x"]
    result = CliRunner().invoke(build_app(args), args, env={"QUANEDGE_ADMIN_TOKEN": ADMIN})
    assert result.exit_code != 0 and "--alert-webhook" in result.output + result.stderr, result.output
