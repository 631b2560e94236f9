"""Helpers shared by the fleet server HTTP tests (no tests here; the name keeps it in the fleet room).

Plain functions and classes only: each test module declares its own fixtures with `open_store` and
`open_client`, so pytest's fixture lookup stays explicit.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # starlette 1.x nudges towards httpx2; the httpx client still works
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from core.reading import Reading
from fleet_server.app import create_app
from fleet_server.settings import ServerSettings
from fleet_server.store.sqlite import SqliteStore

__all__ = [
    "ADMIN", "MAX_BATCH", "Clock", "TestClient", "admin", "bearer", "enroll", "new_token", "open_client",
    "open_store", "post", "rows", "snapshot",
]

ADMIN = "admin-token-for-tests-0123456789"
MAX_BATCH = 200


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def open_store(tmp_path: Path, clock: Clock, backend: str = "sqlite") -> Iterator[SqliteStore]:
    """A fresh store: SQLite in tmp_path, or PostgreSQL in a schema of its own, dropped afterwards."""
    if backend == "sqlite":
        s = SqliteStore(tmp_path / "fleet.db", clock=clock)
        yield s
        s.close()
        return
    from pg_support import pg_schema

    from fleet_server.store.pg import PgStore

    with pg_schema() as (url, schema):
        p = PgStore(url, clock=clock, schema=schema, max_size=4)
        yield p  # type: ignore[misc]  # the same Store seam
        p.close()


def dump_text(store: Any) -> str:
    """Every row the store holds, as text (to prove a secret is not in it): SQLite's dump of the
    file, or each PostgreSQL table of the store's schema row by row."""
    if isinstance(store, SqliteStore):
        return "\n".join(sqlite3.connect(store.path).iterdump())
    import psycopg

    with psycopg.connect(store.url, options=f"-c search_path={store.schema}") as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (store.schema,)).fetchall()]
        rows = [str(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"').fetchall()]
    return "\n".join(rows)


def open_client(tmp_path: Path, store: SqliteStore) -> Iterator[TestClient]:
    """An app over `store` with small limits (200 rows, 64 KiB, pages of 50), lifespan running."""
    settings = ServerSettings(
        db_path=tmp_path / "fleet.db", admin_token=ADMIN, max_batch=MAX_BATCH,
        max_body_bytes=64 * 1024, max_page=50,
        # the tests' readings are from 2023 (the Clock) while the app runs on the real time: a
        # PostgreSQL store's readings-upkeep job must not drop them as past retention mid-test
        retention_days_routine=100_000, retention_days_event=100_000, retention_days_alarm=100_000,
    )
    with TestClient(create_app(settings, store)) as c:
        yield c


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def new_token(client: TestClient, **body: Any) -> str:
    r = client.post("/api/v1/enrollment-tokens", json=body, headers=admin())
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def enroll(client: TestClient, box_id: str = "box-1", hardware: str = "hw-1", **extra: Any) -> str:
    body = {"token": new_token(client), "box_id": box_id, "hardware": hardware, "site": "5th-ave",
            "agent_version": "0.1.0", "tags": ["north"], **extra}
    r = client.post("/api/v1/enroll", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["box_id"] == box_id
    return str(r.json()["credential"])


def rows(first: int, count: int, device: str = "rs1", point: str = "air_temp") -> list[list[Any]]:
    return [
        Reading(device, point, 20.0 + seq / 10, "degC", 1_700_000_000.0 + seq, seq=seq).to_row()
        for seq in range(first, first + count)
    ]


def post(client: TestClient, credential: str, box_id: str, batch: list[Any]) -> Any:
    return client.post("/api/v1/telemetry", json={"box_id": box_id, "readings": batch}, headers=bearer(credential))


def snapshot(store: SqliteStore) -> tuple[Any, ...]:
    """Everything a refused request must leave untouched."""
    boxes = tuple(store.list_boxes())
    return boxes, tuple(tuple(store.readings(b.box_id, limit=10_000)) for b in boxes)
