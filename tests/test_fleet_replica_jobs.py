"""The app's leased periodic jobs (fleet_server.leases): the replica id and retention settings and
their CLI options, /healthz and the metric showing the leases, two PostgreSQL replicas sharing the
jobs and one taking them all over when the other stops, the readings upkeep making and dropping
partitions."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from pg_support import pg_schema
from test_fleet_helpers import ADMIN, TestClient
from typer.testing import CliRunner

from core.errors import ConfigError
from fleet_server.app import create_app
from fleet_server.settings import ServerSettings, default_replica_id
from fleet_server.store.pg_schema import DAY_S, partition_name
from fleet_server.store.sqlite import SqliteStore

T0 = 1_700_000_000.0


# -- settings and CLI -----------------------------------------------------------------------------

def test_replica_id_and_retention_settings() -> None:
    base = {"db_path": "x.db", "admin_token": ADMIN}
    default = ServerSettings(**base)
    assert default.replica_id is None and default.replica == default_replica_id(default.port)
    rid = default_replica_id(8080)  # stable across restarts: <host name>-<port>
    assert rid.endswith("-8080") and 1 <= len(rid) <= 64 and all(c.isalnum() or c in "._-" for c in rid)
    assert ServerSettings(**base, replica_id="fleet-1.zone_a").replica == "fleet-1.zone_a"
    for bad in ("", "a b", "a/b", "x" * 65, "a\n", 5):
        with pytest.raises(ConfigError, match=r"replica_id.*--replica-id|--replica-id.*replica_id"):
            ServerSettings(**base, replica_id=bad)
    assert ServerSettings(**base).retention_days == {"routine": 90, "event": 365, "alarm": 730}
    for cls in ("routine", "event", "alarm"):
        for bad in (0, -5, 1.5, True, "30"):
            with pytest.raises(ConfigError, match=rf"retention_days_{cls}.*--retention-{cls}-days"):
                ServerSettings(**base, **{f"retention_days_{cls}": bad})


def test_serve_refuses_a_bad_retention_naming_the_option(tmp_path: Path) -> None:
    from quanedge.cli import build_app

    args = ["fleet", "serve", "--db", str(tmp_path / "f.db"), "--admin-token", ADMIN, "--retention-alarm-days", "0"]
    result = CliRunner().invoke(build_app(args), args)
    assert result.exit_code == 2 and "--retention-alarm-days" in result.output, result.output
    assert not (tmp_path / "f.db").exists()


# -- the app ----------------------------------------------------------------------------------------

def test_healthz_and_metrics_show_the_lease_and_shutdown_releases_it(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    settings = ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, rollout_sweep_s=0.01,
                              replica_id="replica-a")
    with TestClient(create_app(settings, store)) as client:
        deadline = time.monotonic() + 10
        while not all((body := client.get("/healthz").json())["leases"][job]["leader"]
                      for job in ("rollout-timeouts", "alert-rules")):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert body["replica_id"] == "replica-a" and body["status"] == "ok"
        assert set(body["leases"]) == {"alert-rules", "command-dispatch", "rollout-timeouts"}  # no repo, PG, webhook
        assert body["leases"]["rollout-timeouts"]["expires_at"] > time.time()
        assert 'quanedge_fleet_lease_held{job="rollout-timeouts"} 1.0' in client.get("/metrics").text
        assert {(lease.name, lease.holder) for lease in store.leases()} == {
            ("alert-rules", "replica-a"), ("command-dispatch", "replica-a"), ("rollout-timeouts", "replica-a")}
    assert store.leases() == []  # released when the sweeper stopped
    store.close()


def test_one_replica_keeps_the_tuf_timestamp_signed_and_the_other_takes_over(tmp_path: Path) -> None:
    """Two replicas (here two apps on one store) serving one repository directory: one re-signs,
    the other's keeper never runs until the first stops."""
    from rollout_support import make_repo

    repo = make_repo(tmp_path)
    store = SqliteStore(tmp_path / "fleet.db")
    apps = {rid: create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, tuf_repo_dir=repo.path,
                                           tuf_check_s=0.05, replica_id=rid), store)
            for rid in ("replica-a", "replica-b")}
    clients = {rid: TestClient(app) for rid, app in apps.items()}
    running = dict(clients)
    try:
        for client in clients.values():
            client.__enter__()
        deadline = time.monotonic() + 20
        while not any("tuf-timestamp" in leading(c) for c in clients.values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        leader = next(rid for rid, c in clients.items() if "tuf-timestamp" in leading(c))
        other = next(rid for rid in clients if rid != leader)
        time.sleep(0.2)  # a few more rounds
        assert "tuf-timestamp" not in leading(clients[other])
        assert apps[leader].state.timestamps.expires_in._value.get() > 3600  # type: ignore[attr-defined]
        assert apps[other].state.timestamps.expires_in._value.get() == 0     # type: ignore[attr-defined]
        assert clients[other].get("/healthz").json()["tasks"]["tuf-timestamp-keeper"]["state"] == "running"

        running.pop(leader).__exit__(None, None, None)  # stops cleanly: releases its leases
        while "tuf-timestamp" not in leading(clients[other]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while apps[other].state.timestamps.expires_in._value.get() == 0:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        for client in running.values():
            client.__exit__(None, None, None)
    assert store.leases() == []
    store.close()


def leading(client: TestClient) -> set[str]:
    return {job for job, state in client.get("/healthz").json()["leases"].items() if state["leader"]}


def test_two_postgresql_replicas_share_the_jobs_and_one_takes_over_when_the_other_stops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet_server.app.READINGS_UPKEEP_S", 0.05)  # hourly in production
    jobs = {"alert-rules", "command-dispatch", "readings-upkeep", "rollout-timeouts"}
    with pg_schema() as (url, schema):
        from fleet_server.store.pg import PgStore

        stores = {f"replica-{i}": PgStore(url, schema=schema, max_size=3) for i in range(2)}
        clients = {rid: TestClient(create_app(ServerSettings(db_path=url, admin_token=ADMIN, rollout_sweep_s=0.02,
                                                             alert_rules_s=0.05, replica_id=rid), s))
                   for rid, s in stores.items()}
        running = dict(clients)
        try:
            for client in clients.values():
                client.__enter__()
            deadline = time.monotonic() + 20
            while set().union(*(held := {rid: leading(c) for rid, c in clients.items()}).values()) != jobs:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # every job has one leader (which one won each race depends on timing), both are healthy
            assert not set.intersection(*held.values()), held
            assert {(x.name, x.holder) for x in stores["replica-0"].leases()} == {
                (job, rid) for rid, led in held.items() for job in led}
            assert all(c.get("/healthz").status_code == 200 for c in clients.values())

            # the leader of the rollout timeouts stops: the other replica ends up leading every job
            quitter = next(rid for rid, led in held.items() if "rollout-timeouts" in led)
            stayer = next(rid for rid in clients if rid != quitter)
            running.pop(quitter).__exit__(None, None, None)
            assert {x.holder for x in stores[stayer].leases()} <= {stayer}  # the quitter released its leases
            while leading(clients[stayer]) != jobs:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            assert {(x.name, x.holder) for x in stores[stayer].leases()} == {(job, stayer) for job in jobs}
        finally:
            for client in running.values():
                client.__exit__(None, None, None)
            for s in stores.values():
                s.close()


def _partitions(url: str, schema: str) -> set[str]:
    with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
        return {name for name, in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace AND relkind = 'r'"
            " AND relname ~ '^readings_[a-z]+_[0-9]{8}$'", (schema,))}


def test_the_readings_upkeep_job_makes_partitions_and_drops_expired_ones() -> None:
    """A PostgreSQL replica opened 100 days ago (its partitions around then), now with routine
    readings kept 90 days: the upkeep job's first round makes today's partitions and drops the
    routine ones of 100 days ago, keeping that time's event and alarm partitions (365 / 730)."""
    with pg_schema() as (url, schema):
        from fleet_server.store.pg import PgStore

        then = T0 - T0 % DAY_S + 12 * 3600
        now = then + 100 * DAY_S
        store = PgStore(url, schema=schema, clock=lambda: then, max_size=3)
        try:
            before = _partitions(url, schema)
            assert partition_name("routine", then) in before and partition_name("routine", now) not in before
            settings = ServerSettings(db_path=url, admin_token=ADMIN, rollout_sweep_s=3600,
                                      replica_id="replica-a", retention_days_routine=90)
            with TestClient(create_app(settings, store, clock=lambda: now)) as client:
                deadline = time.monotonic() + 20
                while not client.get("/healthz").json()["leases"]["readings-upkeep"]["leader"]:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                assert "readings-upkeep" in client.get("/healthz").json()["tasks"]
                old_routine = {p for p in before if p.startswith("readings_routine_")}
                # upkeep drops one partition a transaction: wait for the last of them, not the first
                while old_routine & (after := _partitions(url, schema)):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            made = {partition_name(c, now - now % DAY_S + k * DAY_S) for c in ("routine", "event", "alarm")
                    for k in range(-1, 8)}
            assert made <= after
            assert not {p for p in before if p.startswith("readings_routine_")} & after
            assert {p for p in before if not p.startswith("readings_routine_")} <= after
            # the store's own method, again: nothing left to make or drop
            assert store.upkeep(now, settings.retention_days) == ([], [])
        finally:
            store.close()
