"""Admission (issue 9 finding 5): re-key with the current credential, pending -> accepted/rejected by
an admin, answers that never tell which ids exist, revocation, and the broker-down policy."""

from __future__ import annotations

from typing import Any

import pytest
from pg_support import BOTH_BACKENDS

from fleet_server.errors import BrokerUnavailable
from fleet_server.store.sqlite import SqliteStore
from tests.test_fleet_helpers import TestClient, admin, enroll, new_token, post, rows, snapshot


class FakeAccounts:
    """Stands in for the broker: records account changes, or fails like an unreachable broker."""

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}
        self.down = False

    async def set_box(self, box_id: str, password: str) -> None:
        if self.down:
            raise BrokerUnavailable("broker 127.0.0.1:1 did not answer (test)")
        self.passwords[box_id] = password

    async def delete_box(self, box_id: str) -> None:
        if self.down:
            raise BrokerUnavailable("broker 127.0.0.1:1 did not answer (test)")
        self.passwords.pop(box_id, None)


@pytest.fixture
def broker(client: TestClient) -> FakeAccounts:
    fake = FakeAccounts()
    client.app.state.admission.accounts = fake  # type: ignore[attr-defined]
    return fake


def body(client: TestClient, box_id: str, **extra: Any) -> dict[str, Any]:
    return {"token": new_token(client), "box_id": box_id, "hardware": f"hw-{box_id}", **extra}


def shape(r: Any) -> tuple[int, tuple[str, ...], str]:
    data = r.json()
    return r.status_code, tuple(sorted(data)), data.get("status") or data.get("error")


@BOTH_BACKENDS
def test_rekey_with_the_current_credential_keeps_site_and_tags_and_needs_no_token(client: TestClient) -> None:
    old = enroll(client, "b1", "serial-1")
    r = client.post("/api/v1/enroll", json={"box_id": "b1", "hardware": "serial-2", "site": "elsewhere",
                                            "tags": ["other"], "credential": old})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    box = client.get("/api/v1/boxes/b1", headers=admin()).json()
    assert (box["site"], box["tags"], box["hardware"]) == ("5th-ave", ["north"], "serial-2")
    assert post(client, old, "b1", rows(1, 1)).status_code == 401
    assert post(client, r.json()["credential"], "b1", rows(1, 1)).status_code == 200


@BOTH_BACKENDS
def test_answers_never_tell_which_ids_exist(client: TestClient, store: SqliteStore) -> None:
    cred = enroll(client, "b1", "serial-1")
    other = enroll(client, "b2", "serial-2")
    before = snapshot(store)
    # A bad token: the same status and body for an existing and an unknown id.
    bad = [client.post("/api/v1/enroll", json={"token": "nope", "box_id": box, "hardware": "h"})
           for box in ("b1", "ghost")]
    assert bad[0].status_code == bad[1].status_code == 403 and bad[0].json() == bad[1].json()
    # No or a wrong credential: pending, whether the id exists or not; the same shape every time.
    pending = [
        client.post("/api/v1/enroll", json=body(client, "b1")),                       # taken, no credential
        client.post("/api/v1/enroll", json=body(client, "b1", credential=other)),     # another box's
        client.post("/api/v1/enroll", json=body(client, "ghost", credential="x" * 43)),  # unknown id
    ]
    assert {shape(r) for r in pending} == {(202, ("box_id", "request", "status"), "pending")}
    # Nothing changed: no box taken over, no credential rotated.
    assert snapshot(store) == before
    assert post(client, cred, "b1", rows(1, 1)).status_code == 200
    # An unknown request, a rejected one and a collected one answer alike.
    unknown = client.post("/api/v1/enroll/status", json={"request": "no-such-request"})
    assert (unknown.status_code, unknown.json()["error"]) == (403, "not_admitted")


@BOTH_BACKENDS
def test_pending_request_accepted_by_an_admin_gets_its_credential(
    client: TestClient, broker: FakeAccounts
) -> None:
    old = enroll(client, "b1", "serial-1")
    r = client.post("/api/v1/enroll", json=body(client, "b1", site="moved"))
    secret = r.json()["request"]
    assert client.post("/api/v1/enroll/status", json={"request": secret}).status_code == 202
    assert client.get("/api/v1/admission").status_code == 401  # admins only
    listed = client.get("/api/v1/admission", headers=admin()).json()["requests"]
    assert [(q["box_id"], q["hardware"], q["box_exists"]) for q in listed] == [("b1", "hw-b1", True)]
    accepted = client.post(f"/api/v1/admission/{listed[0]['request_id']}/accept", headers=admin())
    assert accepted.json()["state"] == "accepted"
    assert post(client, old, "b1", rows(1, 1)).status_code == 200  # still the old box until collected
    got = client.post("/api/v1/enroll/status", json={"request": secret})
    assert got.status_code == 200 and got.json()["box_id"] == "b1"
    assert got.json()["mqtt"]["password"] == broker.passwords["b1"]
    assert post(client, old, "b1", rows(2, 1)).status_code == 401
    assert post(client, got.json()["credential"], "b1", rows(2, 1)).status_code == 200
    assert client.get("/api/v1/boxes/b1", headers=admin()).json()["site"] == "5th-ave"  # kept
    again = client.post("/api/v1/enroll/status", json={"request": secret})
    assert (again.status_code, again.json()["error"]) == (403, "not_admitted")  # collected once
    assert client.post(f"/api/v1/admission/{listed[0]['request_id']}/accept", headers=admin()).status_code == 404


@BOTH_BACKENDS
def test_pending_request_rejected_by_an_admin_gets_nothing(client: TestClient, store: SqliteStore) -> None:
    enroll(client, "b1", "serial-1")
    before = snapshot(store)
    secret = client.post("/api/v1/enroll", json=body(client, "b1")).json()["request"]
    request_id = client.get("/api/v1/admission", headers=admin()).json()["requests"][0]["request_id"]
    assert client.post(f"/api/v1/admission/{request_id}/reject", headers=admin()).json()["state"] == "rejected"
    rejected = client.post("/api/v1/enroll/status", json={"request": secret})
    unknown = client.post("/api/v1/enroll/status", json={"request": "no-such-request"})
    assert rejected.status_code == unknown.status_code == 403 and rejected.json() == unknown.json()
    assert snapshot(store) == before
    assert client.get("/api/v1/admission", headers=admin()).json()["requests"] == []
    assert [q["state"] for q in client.get("/api/v1/admission?state=all", headers=admin()).json()["requests"]] \
        == ["rejected"]


@BOTH_BACKENDS
def test_revoke_kills_the_credential_and_the_box_needs_an_admin_to_return(
    client: TestClient, broker: FakeAccounts
) -> None:
    r = client.post("/api/v1/enroll", json=body(client, "b1"))
    cred = r.json()["credential"]
    assert "b1" in broker.passwords
    assert client.post("/api/v1/boxes/b1/revoke").status_code == 401
    out = client.post("/api/v1/boxes/b1/revoke", headers=admin())
    assert out.json() == {"box_id": "b1", "revoked": True, "broker_account_deleted": True}
    assert "b1" not in broker.passwords
    assert post(client, cred, "b1", rows(1, 1)).status_code == 401
    # Its credential is dead, so it cannot re-key; a token alone makes it pending.
    assert client.post("/api/v1/enroll", json={"box_id": "b1", "hardware": "hw-b1", "credential": cred}
                       ).status_code == 403
    assert client.post("/api/v1/enroll", json=body(client, "b1")).status_code == 202
    assert client.post("/api/v1/boxes/ghost/revoke", headers=admin()).status_code == 404


@BOTH_BACKENDS
def test_broker_down_at_enrolment_stores_nothing_and_keeps_the_token(
    client: TestClient, store: SqliteStore, broker: FakeAccounts
) -> None:
    token = new_token(client)
    broker.down = True
    r = client.post("/api/v1/enroll", json={"token": token, "box_id": "b1", "hardware": "h"})
    assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "broker_unavailable", "5")
    assert store.list_boxes() == []
    broker.down = False
    r = client.post("/api/v1/enroll", json={"token": token, "box_id": "b1", "hardware": "h"})
    assert r.status_code == 200 and r.json()["mqtt"]["username"] == "b1"


@BOTH_BACKENDS
def test_broker_down_at_revocation_still_kills_the_http_credential(
    client: TestClient, broker: FakeAccounts
) -> None:
    cred = client.post("/api/v1/enroll", json=body(client, "b1")).json()["credential"]
    broker.down = True
    assert client.post("/api/v1/boxes/b1/revoke", headers=admin()).status_code == 503
    assert post(client, cred, "b1", rows(1, 1)).status_code == 401
    broker.down = False
    assert client.post("/api/v1/boxes/b1/revoke", headers=admin()).json()["broker_account_deleted"] is True
    assert "b1" not in broker.passwords


@BOTH_BACKENDS
def test_without_broker_accounts_enrolment_gives_no_mqtt_identity(client: TestClient) -> None:
    r = client.post("/api/v1/enroll", json=body(client, "b1"))
    assert r.status_code == 200 and r.json()["mqtt"] is None
