"""Roles on every user-facing route, 401 before the body, revocation at once, the users API."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from pg_support import BOTH_BACKENDS
from rollout_support import AGENT, make_repo, open_app, provision, serve_in_thread
from test_fleet_helpers import ADMIN, Clock, TestClient, admin, bearer, open_store

from fleet_server.access import AuditQuery, Role
from fleet_server.api.auth import is_user_facing
from fleet_server.app import create_app
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore
from hil_tests.fleet_harness import free_port

ROLLOUT = {"target_name": AGENT, "kind": "agent", "waves": ["100%"]}
PRINCIPALS = ("viewer", "operator", "admin", "bootstrap")


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("roles")).path


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[SqliteStore]:
    for s in open_store(tmp_path, clock, getattr(request, "param", "sqlite")):
        provision(s, 3)
        yield s


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore, clock: Clock, repo_dir: Path) -> Iterator[TestClient]:
    yield from open_app(tmp_path, store, clock, repo_dir)


@pytest.fixture
def tokens(store: SqliteStore) -> dict[str, str]:
    out = {role.value: store.create_user(f"{role.value}-1", role, "", "test")[1] for role in Role}
    return {**out, "bootstrap": ADMIN}


def _rollout(client: TestClient, paused: bool = False) -> dict[str, str]:
    r = client.post("/api/v1/rollouts", json=ROLLOUT, headers=admin())
    assert r.status_code == 201, r.text
    rid = r.json()["rollout_id"]
    if paused:
        assert client.post(f"/api/v1/rollouts/{rid}/pause", headers=admin()).status_code == 200
    return {"rid": rid}


def _victim(client: TestClient) -> dict[str, str]:
    name = f"victim-{time.monotonic_ns()}"
    assert client.post("/api/v1/users", json={"name": name, "role": "viewer"}, headers=admin()).status_code == 201
    return {"victim": name}


def _nothing(client: TestClient) -> dict[str, str]:
    return {}


def _alert(client: TestClient) -> dict[str, str]:
    store = client.app.state.fleet.store  # type: ignore[attr-defined]
    return {"alert": str(store.raise_alert("b00000", "seq_gap", {"first": 1, "last": 2}, 1.0))}


def _command(client: TestClient) -> dict[str, str]:
    from fleet_server.commands import BoxCommand

    store = client.app.state.fleet.store  # type: ignore[attr-defined]
    command_id = f"c-{time.monotonic_ns() % 16**16:016x}"
    store.create_commands([BoxCommand(command_id, "b00000", "gate", "open", {}, "fleet:t", 1.0, 2.0)])
    return {"command": command_id}


Setup = Callable[[TestClient], dict[str, str]]
# (method, path template, body, minimum role, success status, setup giving the template's values)
ROUTES: list[tuple[str, str, Any, str, int, Setup]] = [
    ("GET", "/api/v1/boxes", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/boxes/b00000", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/boxes/b00000/readings", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/boxes/b00000/seq", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/readings", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/readings/export", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/alerts", None, "viewer", 200, _nothing),
    ("POST", "/api/v1/alerts/{alert}/ack", None, "operator", 200, _alert),
    ("GET", "/api/v1/commands", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/commands/{command}", None, "viewer", 200, _command),
    ("POST", "/api/v1/commands", {"device": "gate", "command": "open", "box_ids": ["b00000"]}, "operator", 201,
     _nothing),
    ("GET", "/api/v1/rollouts", None, "viewer", 200, _nothing),
    ("GET", "/api/v1/rollouts/{rid}", None, "viewer", 200, _rollout),
    ("GET", "/api/v1/rollouts/{rid}/actions", None, "viewer", 200, _rollout),
    ("GET", "/api/v1/sites", None, "viewer", 200, _nothing),
    ("POST", "/api/v1/rollouts", ROLLOUT, "operator", 201, _nothing),
    ("POST", "/api/v1/rollouts/{rid}/pause", None, "operator", 200, _rollout),
    ("POST", "/api/v1/rollouts/{rid}/resume", None, "operator", 200, lambda c: _rollout(c, paused=True)),
    ("POST", "/api/v1/rollouts/{rid}/cancel", None, "operator", 200, _rollout),
    ("PUT", "/api/v1/sites/s1/maintenance", {"timezone": "UTC", "windows": [], "blackouts": []}, "admin", 200,
     _nothing),
    ("POST", "/api/v1/enrollment-tokens", {}, "admin", 200, _nothing),
    ("GET", "/api/v1/users", None, "admin", 200, _nothing),
    ("POST", "/api/v1/users", {"name": "new-{who}", "role": "viewer"}, "admin", 201, _nothing),
    ("POST", "/api/v1/users/{victim}/token", None, "admin", 200, _victim),
    ("DELETE", "/api/v1/users/{victim}", None, "admin", 200, _victim),
    ("GET", "/api/v1/audit", None, "admin", 200, _nothing),
    ("GET", "/api/v1/quarantine", None, "admin", 200, _nothing),
    ("GET", "/api/v1/admission", None, "admin", 200, _nothing),
    # No such request / box: past the role check, the route's own 404 (admission is tested in
    # test_fleet_admission.py and test_broker_identity.py).
    ("POST", "/api/v1/admission/adm-0000000000000000/accept", None, "admin", 404, _nothing),
    ("POST", "/api/v1/admission/adm-0000000000000000/reject", None, "admin", 404, _nothing),
    ("POST", "/api/v1/boxes/no-such-box/revoke", None, "admin", 404, _nothing),
]
_RANK = {"viewer": 0, "operator": 1, "admin": 2, "bootstrap": 2}


def _fill(value: Any, params: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**params)
    if isinstance(value, dict):
        return {k: _fill(v, params) for k, v in value.items()}
    return value


@pytest.mark.parametrize("method, path, body, needed, ok, setup", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
@BOTH_BACKENDS
def test_each_role_on_each_route(client: TestClient, tokens: dict[str, str], method: str, path: str, body: Any,
                                 needed: str, ok: int, setup: Setup) -> None:
    for who in (None, "wrong", *PRINCIPALS):
        params = {**setup(client), "who": str(who)}
        headers = {} if who is None else bearer(tokens.get(who, "wrong-token-0123456789abcdef"))
        r = client.request(method, _fill(path, params), json=_fill(body, params), headers=headers)
        if who in (None, "wrong"):
            expected = 401
        else:
            expected = ok if _RANK[who] >= _RANK[needed] else 403
        assert r.status_code == expected, (who, r.text)
        if expected == 403:
            assert r.json() == {"error": "forbidden", "detail": r.json()["detail"]}
            assert f"needs the {needed} role" in r.json()["detail"]
        if expected == 401:
            assert r.json()["error"] == "not_authenticated" and r.headers["www-authenticate"] == "Bearer"


def test_the_table_covers_every_user_facing_route(tmp_path: Path) -> None:
    covered = {(m, p.replace("{rid}", "{rollout_id}")) for m, p, *_ in ROUTES}
    templates = {
        "/api/v1/boxes/b00000": "/api/v1/boxes/{box_id}",
        "/api/v1/boxes/b00000/readings": "/api/v1/boxes/{box_id}/readings",
        "/api/v1/boxes/b00000/seq": "/api/v1/boxes/{box_id}/seq",
        "/api/v1/alerts/{alert}/ack": "/api/v1/alerts/{alert_id}/ack",
        "/api/v1/commands/{command}": "/api/v1/commands/{command_id}",
        "/api/v1/rollouts/{rollout_id}/pause": "/api/v1/rollouts/{rollout_id}/{command}",
        "/api/v1/rollouts/{rollout_id}/resume": "/api/v1/rollouts/{rollout_id}/{command}",
        "/api/v1/rollouts/{rollout_id}/cancel": "/api/v1/rollouts/{rollout_id}/{command}",
        "/api/v1/sites/s1/maintenance": "/api/v1/sites/{site}/maintenance",
        "/api/v1/admission/adm-0000000000000000/accept": "/api/v1/admission/{request_id}/accept",
        "/api/v1/admission/adm-0000000000000000/reject": "/api/v1/admission/{request_id}/reject",
        "/api/v1/boxes/no-such-box/revoke": "/api/v1/boxes/{box_id}/revoke",
        "/api/v1/users/{victim}": "/api/v1/users/{name}",
        "/api/v1/users/{victim}/token": "/api/v1/users/{name}/token",
    }
    covered = {(m, templates.get(p, p)) for m, p in covered}
    app = create_app(ServerSettings(db_path=tmp_path / "x.db", admin_token=ADMIN))
    routes = {(m, r.path) for r in iter_route_contexts(app.routes)
              if isinstance(r.original_route, APIRoute) and is_user_facing(r.path) for m in r.methods}
    assert routes == covered, "add every new user-facing route to ROUTES with its minimum role"


@BOTH_BACKENDS
def test_box_facing_and_public_routes_are_not_behind_user_auth(client: TestClient, store: SqliteStore) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/tuf/metadata/timestamp.json").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    r = client.post("/api/v1/enroll", json={"token": "nope", "box_id": "x1", "hardware": "h"})
    assert r.status_code == 403 and r.json()["error"] != "not_authenticated"   # judged by the enrollment route
    credential = provision(store, 1, prefix="c")["c00000"]
    assert client.get("/api/v1/boxes/c00000/checkin", headers=bearer(credential)).status_code == 200
    # A box credential is no API user: 401 on user-facing routes.
    assert client.get("/api/v1/boxes", headers=bearer(credential)).status_code == 401


@BOTH_BACKENDS
def test_unknown_user_facing_paths_need_a_token_first(client: TestClient) -> None:
    assert client.get("/api/v1/no-such-thing").status_code == 401
    assert client.get("/api/v1/no-such-thing", headers=admin()).status_code == 404


@BOTH_BACKENDS
def test_behind_a_root_path_the_same_rules_hold(tmp_path: Path, store: SqliteStore) -> None:
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN), store)
    with TestClient(app, root_path="/fleet") as c:
        assert c.get("/fleet/api/v1/boxes").status_code == 401
        assert c.get("/fleet/api/v1/boxes", headers=admin()).status_code == 200
        assert c.post("/fleet/api/v1/enrollment-tokens", json={}, headers=admin()).status_code == 200
    assert [e.target for e in store.audit_entries(AuditQuery())] == ["/fleet/api/v1/enrollment-tokens"]


@BOTH_BACKENDS
def test_refusals_are_counted(client: TestClient, tokens: dict[str, str]) -> None:
    client.get("/api/v1/boxes")
    client.get("/api/v1/boxes", headers={"Authorization": "Basic abc"})
    client.get("/api/v1/boxes", headers=bearer("guess-0123456789"))
    client.get("/api/v1/users", headers=bearer(tokens["operator"]))
    client.get("/api/v1/users", headers=bearer(tokens["admin"]))
    metrics = client.get("/metrics").text
    for line in ('quanedge_api_auth_refusals_total{reason="no_token"} 2.0',
                 'quanedge_api_auth_refusals_total{reason="bad_token"} 1.0',
                 'quanedge_api_auth_refusals_total{reason="role"} 1.0'):
        assert line in metrics, line


@BOTH_BACKENDS
def test_revoked_token_is_refused_at_once(client: TestClient) -> None:
    r = client.post("/api/v1/users", json={"name": "dave", "role": "operator", "note": "ops"}, headers=admin())
    assert r.status_code == 201
    token = r.json()["token"]
    assert client.get("/api/v1/rollouts", headers=bearer(token)).status_code == 200
    r = client.post("/api/v1/users/dave/token", headers=admin())
    assert r.status_code == 200 and r.json()["name"] == "dave"
    assert client.get("/api/v1/rollouts", headers=bearer(token)).status_code == 401   # the old one
    token = r.json()["token"]
    assert client.get("/api/v1/rollouts", headers=bearer(token)).status_code == 200
    r = client.delete("/api/v1/users/dave", headers=admin())
    assert r.status_code == 200 and r.json()["revoked_by"] == "bootstrap-admin" and not r.json()["active"]
    r = client.get("/api/v1/rollouts", headers=bearer(token))
    assert (r.status_code, r.json()["detail"]) == (401, "unknown or revoked API token")


@BOTH_BACKENDS
def test_users_api(client: TestClient) -> None:
    r = client.post("/api/v1/users", json={"name": "erin@city.example", "role": "admin"}, headers=admin())
    assert r.status_code == 201
    user = r.json()
    assert user["created_by"] == "bootstrap-admin" and user["role"] == "admin" and len(user["token"]) >= 43
    erin = bearer(user["token"])
    r = client.post("/api/v1/users", json={"name": "frank", "role": "viewer"}, headers=erin)
    assert r.status_code == 201 and r.json()["created_by"] == "erin@city.example"
    listed = client.get("/api/v1/users", headers=erin).json()["users"]
    assert [u["name"] for u in listed] == ["erin@city.example", "frank"] and "token" not in listed[0]
    assert client.delete("/api/v1/users/frank", headers=erin).status_code == 200
    assert [u["name"] for u in client.get("/api/v1/users", headers=erin).json()["users"]] == ["erin@city.example"]
    everyone = client.get("/api/v1/users?revoked=true", headers=erin).json()["users"]
    assert [(u["name"], u["active"]) for u in everyone] == [("erin@city.example", True), ("frank", False)]
    for body, status in (({"name": "frank", "role": "viewer"}, 409),
                         ({"name": "bootstrap-admin", "role": "admin"}, 409), ({"name": "x y", "role": "viewer"}, 422),
                         ({"name": "g", "role": "root"}, 422),
                         ({"name": "g", "role": "viewer", "extra": 1}, 422)):
        assert client.post("/api/v1/users", json=body, headers=erin).status_code == status, body
    assert client.delete("/api/v1/users/nobody", headers=erin).json()["error"] == "unknown_user"
    assert client.post("/api/v1/users/frank/token", headers=erin).json()["error"] == "unknown_user"  # revoked


def _answer(sock: socket.socket) -> str:
    """Read one response (headers and the small JSON body that follows them)."""
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def test_a_large_body_without_a_token_is_refused_unread(tmp_path: Path) -> None:
    """Headers announce a body under the route's cap (the body cap refuses larger ones first, with
    413), a few KB follow: the 401 comes anyway, without waiting for the rest."""
    store = SqliteStore(tmp_path / "fleet.db")
    port = free_port()
    app = create_app(ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN, port=port), store)
    try:
        with serve_in_thread(app, port):
            for path, auth, size in (
                ("/api/v1/rollouts", "Authorization: Bearer not-a-valid-token-at-all\r\n", 6 * 2**20),
                ("/api/v1/users", "", 60 * 2**10),
            ):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
                            f"Content-Length: {size}\r\n\r\n")
                    sock.sendall(head.encode() + b"[" * 4096)
                    answer = _answer(sock)
                assert answer.startswith("HTTP/1.1 401"), answer
                assert '"error":"not_authenticated"' in answer
        refused = store.audit_entries(AuditQuery())
        assert [(e.action, e.status, e.principal, e.parameters) for e in refused] == [
            ("create_user", 401, "anonymous", "{}"), ("create_rollout", 401, "anonymous", "{}")]
    finally:
        store.close()


def test_openapi_declares_the_bearer_scheme_and_which_routes_need_it(tmp_path: Path) -> None:
    app = create_app(ServerSettings(db_path=tmp_path / "x.db", admin_token=ADMIN))
    schema = app.openapi()
    api_token = schema["components"]["securitySchemes"]["apiToken"]
    assert (api_token["type"], api_token["scheme"]) == ("http", "bearer")
    for method, path, *_ in ROUTES:
        template = path.replace("{rid}", "{rollout_id}").replace("{victim}", "{name}").replace("b00000", "{box_id}")
        template = template.replace("/s1/", "/{site}/").replace("adm-0000000000000000", "{request_id}")
        template = template.replace("/no-such-box/", "/{box_id}/").replace("{alert}", "{alert_id}")
        template = template.replace("/commands/{command}", "/commands/{command_id}")
        for command in ("pause", "resume", "cancel"):
            template = template.replace(f"/{command}", "/{command}")
        operation = schema["paths"][template][method.lower()]
        assert operation["security"] == [{"apiToken": []}], (method, path)
        assert {"401", "403"} <= set(operation["responses"]), (method, path)
    for path, method in (("/api/v1/telemetry", "post"), ("/api/v1/boxes/{box_id}/checkin", "get"),
                         ("/api/v1/boxes/{box_id}/inventory", "put"),
                         ("/api/v1/boxes/{box_id}/actions/{action_id}/status", "post")):
        assert schema["paths"][path][method]["security"] == [{"boxCredential": []}], path
    for path, method in (("/api/v1/enroll", "post"), ("/healthz", "get"), ("/tuf/metadata/{name}", "get")):
        assert "security" not in schema["paths"][path][method], path


def test_public_api_of_the_access_modules_is_pinned() -> None:
    import importlib

    expected = {
        "fleet_server.access": ["BOOTSTRAP_ADMIN", "USER_NAME_PATTERN", "AuditEntry", "AuditQuery", "Principal",
                                "Role", "UnknownUser", "User", "UserExists"],
        "fleet_server.store.access": ["AuditStore", "UserStore"],
        "fleet_server.api.auth": ["API_TOKEN_SCHEME", "BOX_CREDENTIAL_SCHEME", "BOX_FACING", "AuthMiddleware",
                                  "bearer_of", "document_auth", "is_user_facing", "principal_of", "route_path"],
        "fleet_server.api.audit_trail": ["AuditMiddleware", "summarize"],
        "fleet_server.api.deps": ["FleetState", "bearer_token", "caller", "fleet", "require_admin",
                                  "require_operator", "require_viewer"],
        "fleet_server.cli_admin": ["register"],
    }
    for name, names in expected.items():
        module = importlib.import_module(name)
        assert sorted(module.__all__) == sorted(names), name
        assert all(hasattr(module, attr) for attr in names), name
