"""`quanedge rollout ...` and `quanedge sim fleet` against a real server (uvicorn in a thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_support import AGENT, make_repo, provision, serve_in_thread
from test_fleet_helpers import ADMIN
from typer.testing import CliRunner

from fleet_server.app import create_app
from fleet_server.rollout import cli as rollout_cli
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port
from quanedge.cli import build_app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, SqliteStore]]:
    repo = make_repo(tmp_path)
    store = SqliteStore(tmp_path / "fleet.db")
    port = free_port()
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, tuf_repo_dir=repo.path,
                                    port=port, checkin_interval_s=1), store)
    with serve_in_thread(app, port) as url:
        yield url, store
    store.close()


def run(*args: str, token: str | None = ADMIN) -> tuple[int, str]:
    result = CliRunner().invoke(build_app(list(args)), list(args), env={"QUANEDGE_ADMIN_TOKEN": token})
    return result.exit_code, result.output


def test_rollout_commands(server: tuple[str, SqliteStore]) -> None:
    url, store = server
    provision(store, 300)
    code, out = run("rollout", "create", AGENT, "--kind", "agent", "--tag", "north", "--server", url)
    assert code == 0, out
    rollout_id = out.split(":")[0]
    assert out.strip().endswith("to 300 boxes in waves of 1, 2, 27, 120, 150")
    code, out = run("rollout", "pause", rollout_id, "--server", url)
    assert (code, out.strip()) == (0, f"{rollout_id}: paused")
    code, out = run("rollout", "status", rollout_id, "--server", url)
    assert code == 0 and "paused by admin" in out and "wave 5" in out and "0/150" in out and "300" in out
    assert run("rollout", "resume", rollout_id, "--server", url) == (0, f"{rollout_id}: running\n")
    code, out = run("rollout", "list", "--active", "--server", url)
    assert code == 0 and rollout_id in out and "0/300 succeeded" in out
    assert run("rollout", "cancel", rollout_id, "--server", url)[0] == 0
    code, out = run("rollout", "status", rollout_id, "--watch", "--server", url)   # ends: canceled
    assert code == 0 and "canceled" in out
    code, out = run("rollout", "resume", rollout_id, "--server", url)
    assert code == 1 and "409" in out and "canceled" in out


def test_refusals_print_the_servers_reason(server: tuple[str, SqliteStore]) -> None:
    url, store = server
    provision(store, 3)
    code, out = run("rollout", "create", "missing.tar", "--kind", "agent", "--server", url)
    assert code == 1 and "no published target named 'missing.tar'" in out
    code, out = run("rollout", "create", AGENT, "--kind", "agent", "--waves", "1,50%", "--server", url)
    assert code == 1 and "last wave must be '100%'" in out
    code, out = run("rollout", "create", AGENT, "--kind", "agent", "--timeout", "1", "--server", url)
    assert code == 1 and "timeout_s" in out
    code, out = run("rollout", "status", "r-00000000", "--server", url, "--admin-token", "wrong-token-0123456789")
    assert code == 1 and "401" in out
    code, out = run("rollout", "list", "--server", "http://127.0.0.1:1")
    assert code == 1 and "cannot reach" in out
    assert store.list_rollouts() == []


def test_window_command(server: tuple[str, SqliteStore]) -> None:
    url, store = server
    code, out = run("rollout", "window", "junction-9", "--tz", "Europe/Berlin", "--allow", "mon-fri 22:00-05:00",
                    "--blackout", "daily 07:00-09:30 firmware", "--server", url)
    assert (code, out.strip()) == (0, "junction-9 (Europe/Berlin): 1 window(s), 1 blackout(s)")
    [policy] = store.site_policies()
    assert policy.blackouts[0].kinds == frozenset({"firmware"})
    code, out = run("rollout", "window", "junction-9", "--tz", "Nowhere/Land", "--server", url)
    assert code == 1 and "IANA" in out


def test_every_rollout_command_is_documented() -> None:
    names = {c.name for c in rollout_cli.app.registered_commands}
    assert names == {"create", "status", "list", "pause", "resume", "cancel", "window"}
    for name in names:
        assert f"quanedge rollout {name}" in rollout_cli.__doc__ or f"|{name}" in rollout_cli.__doc__ \
            or f"{name}|" in rollout_cli.__doc__, name


def test_sim_fleet_command_runs_boxes_against_the_server(server: tuple[str, SqliteStore], tmp_path: Path) -> None:
    url, store = server
    code, out = run("sim", "fleet", "--boxes", "5", "--server", url, "--db", str(tmp_path / "fleet.db"),
                    "--duration", "2.5", "--report-s", "1", "--prefix", "cli")
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0].startswith("5 boxes enrolled")
    final = json.loads(lines[-1])
    assert final["checkin_200"] >= 5 and "http_errors" not in final
    assert {b.box_id for b in store.list_boxes()} == {f"cli-{i:06d}" for i in range(5)}
    code, out = run("sim", "fleet", "--boxes", "5", "--server", url, token=None)
    assert code == 2 and "--db" in out
    # through the API with the admin token instead of the database
    code, out = run("sim", "fleet", "--boxes", "3", "--server", url, "--duration", "1", "--prefix", "api")
    assert code == 0 and out.startswith("3 boxes enrolled"), out
    assert len(store.list_boxes()) == 8
