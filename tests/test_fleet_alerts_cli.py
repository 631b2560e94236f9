"""`quanedge fleet alerts list|ack` against a real server (uvicorn in a thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_support import serve_in_thread
from test_fleet_helpers import ADMIN
from typer.testing import CliRunner

from core.reading import Reading
from fleet_server.access import Role
from fleet_server.alerts import AlertKey
from fleet_server.app import create_app
from fleet_server.seq_tracking import SeqReport
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port
from quanedge.cli import build_app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, SqliteStore]]:
    store = SqliteStore(tmp_path / "fleet.db")
    store.enroll(store.create_enrollment_token(60, 1, ""), "box-7", "hw", "site", "0.1.0", [])
    port = free_port()
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, port=port), store)
    with serve_in_thread(app, port) as url:
        yield url, store
    store.close()


def run(*args: str, token: str | None = ADMIN) -> tuple[int, str, str]:
    env = {"QUANEDGE_ADMIN_TOKEN": token, "QUANEDGE_TOKEN": None, "COLUMNS": "200"}
    result = CliRunner().invoke(build_app(list(args)), list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def batch(first: int, count: int) -> list[Reading]:
    return [Reading("rs1", "t", 1.0, "degC", 1_764_000_000.0, seq=s) for s in range(first, first + count)]


def test_list_and_ack(server: tuple[str, SqliteStore]) -> None:
    url, store = server
    store.ingest("box-7", batch(1, 10), SeqReport(low=1, base=1))
    store.ingest("box-7", batch(31, 10), SeqReport(low=31, base=1))   # 11..30 lost
    other = store.raise_alert(None, "disk_full", {"free_bytes": 0}, 1_764_000_000.0)
    code, out, err = run("fleet", "alerts", "list", "--kind", "seq_gap", "--box", "box-7", "--server", url)
    assert code == 0, err
    assert "box-7" in out and "seqs 11..30: 20 readings missing (unannounced)" in out and "open" in out
    assert "disk_full" not in out
    [gap] = [json.loads(line) for line in run("fleet", "alerts", "list", "--json", "--kind", "seq_gap",
                                              "--server", url)[1].splitlines()]
    viewer = store.create_user("vera", Role.VIEWER, "", "test")[1]
    code, _, err = run("fleet", "alerts", "ack", str(gap["id"]), "--server", url, "--token", viewer)
    assert code == 1 and "403" in err and "needs the operator role" in err
    operator = store.create_user("otto", Role.OPERATOR, "", "test")[1]
    code, out, err = run("fleet", "alerts", "ack", str(gap["id"]), "--server", url, "--token", operator)
    assert code == 0 and out.startswith(f"alert {gap['id']} (seq_gap, box-7) acknowledged by otto at "), err
    code, out, _ = run("fleet", "alerts", "list", "--server", url, "--token", viewer)
    assert code == 0 and "seqs 11..30" not in out and "disk_full" in out and str(other) in out
    code, out, _ = run("fleet", "alerts", "list", "--all", "--server", url, "--token", viewer)
    assert "seqs 11..30" in out and "by otto" in out
    store.resolve_alert(AlertKey("disk_full", None), 1_764_000_100.0)
    code, out, _ = run("fleet", "alerts", "list", "--state", "resolved", "--server", url, "--token", viewer)
    assert code == 0 and "disk_full" in out and "resolved 2025-11-24" in out and "seqs 11..30" not in out
    code, out, _ = run("fleet", "alerts", "list", "--server", url, "--token", viewer)
    assert "disk_full" not in out
    code, _, err = run("fleet", "alerts", "ack", "999", "--server", url)
    assert code == 1 and "404" in err
