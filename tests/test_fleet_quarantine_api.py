"""GET /api/v1/quarantine: admin only, paged, filtered by reason; the store keeps it bounded."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_fleet_helpers import Clock, TestClient, admin, bearer, enroll, open_store

from fleet_server.store import quarantine as q
from fleet_server.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    yield from open_store(tmp_path, Clock())


def test_quarantine_is_admin_only_paged_and_filtered(client: TestClient, store: SqliteStore) -> None:
    for n in range(5):
        store.quarantine("mqtt", f"quanedge/b{n}/telemetry", b"\xff%d" % n, "bad_json" if n % 2 else "bad_row",
                         f"detail {n}", 1_700_000_000.0 + n)
    credential = enroll(client)
    assert client.get("/api/v1/quarantine").status_code == 401
    assert client.get("/api/v1/quarantine", headers=bearer(credential)).status_code == 401
    page = client.get("/api/v1/quarantine", params={"limit": 2}, headers=admin()).json()
    assert [m["id"] for m in page["messages"]] == [1, 2] and page["next_after_id"] == 2 and page["total"] == 5
    first = page["messages"][0]
    assert first["payload_text"] is None and base64.b64decode(first["payload_base64"]) == b"\xff0"
    assert ((first["topic"], first["reason"], first["received_at"])
            == ("quanedge/b0/telemetry", "bad_row", 1_700_000_000.0))
    page = client.get("/api/v1/quarantine", params={"after_id": 2, "reason": "bad_json"}, headers=admin()).json()
    assert [m["id"] for m in page["messages"]] == [4]
    assert client.get("/api/v1/quarantine", params={"reason": "Bad Reason"}, headers=admin()).status_code == 422
    assert client.get("/api/v1/quarantine", params={"limit": 1001}, headers=admin()).status_code == 422


def test_the_quarantine_keeps_the_newest_and_caps_payload_topic_and_detail(store: SqliteStore,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet_server.store.sql_quarantine.KEEP_MAX", 3)
    for n in range(5):
        store.quarantine("mqtt", "t" * 1000 + "\ud800", b"x" * (q.PAYLOAD_MAX + 10), "internal", "d\ud800" * 2000, n)
    kept = store.quarantined()
    assert [m.id for m in kept] == [3, 4, 5] and store.count_quarantined() == 3
    assert len(kept[0].payload) == q.PAYLOAD_MAX and kept[0].size == q.PAYLOAD_MAX + 10 and kept[0].truncated
    assert len(kept[0].topic) == q.TOPIC_MAX and kept[0].detail.startswith("d\\ud800")
