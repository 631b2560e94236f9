"""The audit log over HTTP: every state-changing call and its outcome, no secrets, filters, paging."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pg_support import BOTH_BACKENDS
from test_fleet_helpers import ADMIN, Clock, TestClient, admin, bearer, dump_text, enroll, post, rows

from fleet_server.access import Role
from fleet_server.api.audit_trail import summarize
from fleet_server.app import create_app
from fleet_server.errors import StoreError
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

SECRET = "s3cr3t-value-that-must-never-be-stored"


@pytest.fixture
def client(tmp_path: Path, store: SqliteStore, clock: Clock) -> Iterator[TestClient]:
    settings = ServerSettings(db_path=tmp_path / "fleet.db", admin_token=ADMIN)
    with TestClient(create_app(settings, store, clock=clock), raise_server_exceptions=False) as c:
        yield c


def audit(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/api/v1/audit", params=params, headers=admin())
    assert r.status_code == 200, r.text
    return list(r.json()["entries"])


def dump(store: SqliteStore) -> str:
    return dump_text(store)


@BOTH_BACKENDS
def test_success_and_refusals_are_recorded_without_secrets(client: TestClient, store: SqliteStore) -> None:
    r = client.post("/api/v1/users", json={"name": "vera", "role": "viewer", "note": "read-only"}, headers=admin())
    token = r.json()["token"]
    assert client.post("/api/v1/rollouts", json={"target_name": "x", "kind": "agent"},
                       headers=bearer(token)).status_code == 403
    assert client.post("/api/v1/users", json={"name": "w"}, headers=bearer(SECRET)).status_code == 401
    assert client.post("/api/v1/users", json={"name": "w", "role": "viewer", "token": SECRET},
                       headers=admin()).status_code == 422
    entries = audit(client)
    got = [(e["principal"], e["role"], e["method"], e["action"], e["target"], e["status"], e["outcome"], e["error"])
           for e in entries]
    assert got == [
        ("bootstrap-admin", "admin", "POST", "create_user", "/api/v1/users", 422, "refused", "invalid_request"),
        ("anonymous", "", "POST", "create_user", "/api/v1/users", 401, "refused", "not_authenticated"),
        ("vera", "viewer", "POST", "create_rollout", "/api/v1/rollouts", 403, "refused", "forbidden"),
        ("bootstrap-admin", "admin", "POST", "create_user", "/api/v1/users", 201, "ok", ""),
    ]
    assert json.loads(entries[3]["parameters"]) == {"body": {"name": "vera", "role": "viewer", "note": "read-only"}}
    assert json.loads(entries[2]["parameters"])["body"] == {"target_name": "x", "kind": "agent"}
    assert entries[1]["parameters"] == "{}"   # refused before the body was read
    assert json.loads(entries[0]["parameters"])["body"]["token"] == "[redacted]"
    assert entries[0]["source"] == "testclient" and entries[0]["ts"] == 1_700_000_000.0
    everything = dump(store)
    assert SECRET not in everything and token not in everything and ADMIN not in everything


@BOTH_BACKENDS
def test_reads_and_box_facing_calls_are_not_audited(client: TestClient) -> None:
    credential = enroll(client)  # POST /api/v1/enrollment-tokens (audited) + POST /api/v1/enroll (box-facing)
    assert post(client, credential, "box-1", rows(1, 2)).status_code == 200
    client.get("/api/v1/boxes", headers=admin())
    assert [e["action"] for e in audit(client)] == ["create_enrollment_token"]


@BOTH_BACKENDS
def test_every_outcome_of_a_route_is_recorded(client: TestClient, store: SqliteStore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.delete("/api/v1/users/ghost", headers=admin()).status_code == 404
    assert client.post("/api/v1/no-such-route", headers=admin()).status_code == 404
    assert client.patch("/api/v1/users", headers=admin()).status_code == 405

    def broken(*args: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "create_enrollment_token", broken)
    assert client.post("/api/v1/enrollment-tokens", json={}, headers=admin()).status_code == 500
    got = [(e["action"], e["status"], e["outcome"], e["error"]) for e in audit(client)]
    assert got == [("create_enrollment_token", 500, "failed", ""), ("create_user", 405, "refused", ""),
                   ("unknown", 404, "refused", ""), ("revoke_user", 404, "refused", "unknown_user")]


@BOTH_BACKENDS
def test_a_lost_audit_entry_is_counted_and_the_call_still_answered(
    client: TestClient, store: SqliteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def disk_full(*args: Any) -> int:
        raise StoreError("disk full")

    monkeypatch.setattr(store, "record_audit", disk_full)
    r = client.post("/api/v1/enrollment-tokens", json={}, headers=admin())
    assert r.status_code == 200
    assert "audit entry lost (POST /api/v1/enrollment-tokens by bootstrap-admin -> 200): disk full" in caplog.text
    assert "quanedge_audit_write_failures_total 1.0" in client.get("/metrics").text


@BOTH_BACKENDS
def test_filters_and_paging(client: TestClient, store: SqliteStore, clock: Clock) -> None:
    _, alice = store.create_user("alice", Role.ADMIN, "", "test")
    for i in range(5):
        clock.now = 1_700_000_000.0 + i * 3600
        client.post("/api/v1/enrollment-tokens", json={"note": f"n{i}"}, headers=bearer(alice))
        client.post("/api/v1/users", json={"name": f"u{i}", "role": "viewer"}, headers=admin())
    assert len(audit(client, user="alice")) == 5
    assert {e["principal"] for e in audit(client, action="create_user")} == {"bootstrap-admin"}
    since = audit(client, user="alice", since="2023-11-14T23:13:20Z", until=1_700_000_000 + 3 * 3600)
    assert [json.loads(e["parameters"])["body"]["note"] for e in since] == ["n2", "n1"]
    page = client.get("/api/v1/audit", params={"limit": 4}, headers=admin()).json()
    assert len(page["entries"]) == 4 and page["next_before"] == page["entries"][-1]["id"]
    seen = [e["id"] for e in page["entries"]]
    while page["next_before"] is not None:
        page = client.get("/api/v1/audit", params={"limit": 4, "before": page["next_before"]}, headers=admin()).json()
        seen += [e["id"] for e in page["entries"]]
    assert seen == sorted(seen, reverse=True) and len(seen) == 10   # reading the log is not audited
    for query in ({"since": "yesterday"}, {"until": "-5"}, {"limit": 0}, {"before": 0}):
        r = client.get("/api/v1/audit", params=query, headers=admin())
        assert r.status_code in (422,), (query, r.text)


def test_parameters_are_bounded() -> None:
    big = {"box_ids": [f"b{i}" for i in range(100_000)], "note": "x" * 10_000, "n": 10**400,
           "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}}, "text": "\ud800"}
    text = summarize(b"", json.dumps(big).encode(), len(json.dumps(big)))
    assert len(text) <= 2000
    body = json.loads(text)["body"]
    assert body["box_ids"][-1] == "... 99980 more" and body["note"].endswith("(10000 chars)")
    assert body["n"] == "<integer of 401 digits>" and body["deep"]["a"]["b"]["c"] == "{1 keys}"
    assert summarize(b"a=1&password=x", b"not json", 8) == '{"query":{"a":"1","password":"[redacted]"},"body_bytes":8}'
    assert summarize(b"", b'{"a": 1', 10_000) == '{"body_bytes":10000}'
    assert summarize(b"", b"[" * 60_000 + b"]" * 60_000, 120_000) == '{"body_bytes":120000}'
    huge = {f"k{i}": "v" * 150 for i in range(20)}
    assert json.loads(summarize(b"", json.dumps(huge).encode(), len(json.dumps(huge))))["truncated"] is True


@BOTH_BACKENDS
def test_anonymous_refusals_are_recorded_at_a_bounded_rate_per_source(client: TestClient, clock: Clock) -> None:
    for _ in range(65):
        assert client.post("/api/v1/users", json={}).status_code == 401
    assert client.post("/api/v1/users", json={"name": "z", "role": "viewer"}, headers=admin()).status_code == 201
    entries = audit(client)
    assert len(entries) == 61 and entries[0]["principal"] == "bootstrap-admin"   # a user is always recorded
    assert "quanedge_audit_suppressed_total 5.0" in client.get("/metrics").text
    clock.now += 60
    assert client.post("/api/v1/users%00x", json={}).status_code == 401
    latest = audit(client)[0]
    assert json.loads(latest["parameters"]) == {"suppressed_before": 5}
    assert latest["target"] == "/api/v1/users?x"


_MARK = "SECRET-MARK-0123456789"
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.text(max_size=20), inner, max_size=30),
    max_leaves=200,
)
_secret_keys = st.sampled_from(["token", "password", "admin_token", "Credential", "client_secret", "apiKey"])


@settings(max_examples=200, deadline=None)
@given(value=_json, key=_secret_keys, where=st.integers(0, 3), query=st.binary(max_size=200))
def test_summarize_is_bounded_json_and_never_keeps_a_secret(value: Any, key: str, where: int, query: bytes) -> None:
    nested: Any = {key: _MARK}
    for _ in range(where):
        nested = {"outer": [nested]}
    body = json.dumps({"data": value, "nested": nested}).encode()
    text = summarize(query, body, len(body))
    assert len(text) <= 2000 and _MARK not in text
    assert isinstance(json.loads(text), dict)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=2000), query=st.binary(max_size=200))
def test_summarize_takes_any_bytes(body: bytes, query: bytes) -> None:
    text = summarize(query, body, len(body))
    assert len(text) <= 2000 and isinstance(json.loads(text), dict)
