"""`quanedge fleet user ...` and `quanedge fleet audit` against a real server (uvicorn in a thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rollout_support import serve_in_thread
from test_fleet_helpers import ADMIN
from typer.testing import CliRunner

from fleet_server.app import create_app
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port
from quanedge.cli import build_app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, SqliteStore]]:
    store = SqliteStore(tmp_path / "fleet.db")
    port = free_port()
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, port=port), store)
    with serve_in_thread(app, port) as url:
        yield url, store
    store.close()


def run(*args: str, token: str | None = ADMIN) -> tuple[int, str, str]:
    env = {"QUANEDGE_ADMIN_TOKEN": token, "QUANEDGE_TOKEN": None, "COLUMNS": "200"}
    result = CliRunner().invoke(build_app(list(args)), list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_user_create_list_revoke(server: tuple[str, SqliteStore]) -> None:
    url, store = server
    code, out, err = run("fleet", "user", "create", "olga", "--role", "operator", "--note", "night shift",
                         "--server", url)
    assert code == 0, err
    token = out.strip()
    assert "shown only this once" in err and len(token) >= 43
    assert store.user_for_token(token).name == "olga"  # type: ignore[union-attr]
    # The new operator may not create users: the CLI prints the server's reason.
    code, out, err = run("fleet", "user", "create", "x", "--role", "viewer", "--server", url, "--token", token)
    assert code == 1 and "403" in err and "needs the admin role" in err
    code, out, _ = run("fleet", "user", "list", "--server", url)
    assert code == 0 and "olga" in out and "operator" in out and "night shift" in out and token not in out
    code, out, err = run("fleet", "user", "rotate", "olga", "--server", url)
    assert code == 0 and "shown only this once" in err
    assert store.user_for_token(token) is None
    token = out.strip()
    assert store.user_for_token(token).name == "olga"  # type: ignore[union-attr]
    code, out, _ = run("fleet", "user", "revoke", "olga", "--server", url)
    assert code == 0 and out.startswith("revoked olga (operator) at ")
    assert store.user_for_token(token) is None
    code, out, _ = run("fleet", "user", "list", "--server", url)
    assert code == 0 and "olga" not in out
    code, out, _ = run("fleet", "user", "list", "--all", "--json", "--server", url)
    assert [(u["name"], u["active"], u["revoked_by"]) for u in map(json.loads, out.splitlines())] == [
        ("olga", False, "bootstrap-admin")]
    code, _, err = run("fleet", "user", "list", "--server", url, "--token", token)
    assert code == 1 and "401" in err and "revoked" in err
    code, _, err = run("fleet", "user", "create", "olga", "--role", "viewer", "--server", url)
    assert code == 1 and "409" in err
    code, _, err = run("fleet", "user", "list", "--server", "http://127.0.0.1:1")
    assert code == 1 and "cannot reach" in err


def test_audit_command(server: tuple[str, SqliteStore]) -> None:
    url, _ = server
    run("fleet", "user", "create", "pia", "--role", "viewer", "--server", url)
    run("fleet", "user", "revoke", "pia", "--server", url)
    run("fleet", "user", "list", "--server", url, "--token", "wrong-token-0123456789")   # a GET: not audited
    run("fleet", "user", "revoke", "nobody", "--server", url)
    code, out, err = run("fleet", "audit", "--server", url)
    assert code == 0, err
    for text in ("create_user", "revoke_user", "bootstrap-admin", "/api/v1/users/pia", "404 unknown_user",
                 "127.0.0.1"):
        assert text in out, text
    code, out, _ = run("fleet", "audit", "--action", "revoke_user", "--since", "1h", "--json", "--server", url)
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["target"], e["status"]) for e in entries] == [("/api/v1/users/nobody", 404), ("/api/v1/users/pia", 200)]
    code, out, err = run("fleet", "audit", "--limit", "1", "--json", "--server", url)
    assert code == 0 and len(out.splitlines()) == 1 and "more: --before" in err
    code, out, _ = run("fleet", "audit", "--until", "2000-01-01T00:00:00Z", "--json", "--server", url)
    assert code == 0 and out == ""
    code, _, err = run("fleet", "audit", "--since", "last tuesday", "--server", url)
    assert code == 1 and "422" in err and "since" in err
