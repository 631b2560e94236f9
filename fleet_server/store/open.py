"""Open the store `--db` names: a PostgreSQL URL (postgresql://...) or a SQLite file path."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fleet_server.store.base import Store

__all__ = ["describe_db", "is_postgres_url", "open_store"]


def is_postgres_url(db: str | Path) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def open_store(db: str | Path, *, clock: Callable[[], float] = time.time) -> Store:
    """The backend for `db`; each imports its driver only when chosen (psycopg for PostgreSQL)."""
    if is_postgres_url(db):
        from fleet_server.store.pg import PgStore

        return PgStore(str(db), clock=clock)
    from fleet_server.store.sqlite import SqliteStore

    path = Path(db)
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(path, clock=clock)


def describe_db(db: str | Path) -> str:
    """`db` for logs and messages: a PostgreSQL URL without its password."""
    if is_postgres_url(db):
        from fleet_server.store.pg import redact_url

        return redact_url(str(db))
    return str(db)
