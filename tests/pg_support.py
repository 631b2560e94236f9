"""PostgreSQL for tests: the server at 127.0.0.1:5432 (trust auth, database `test`), as on CI.

    with pg_schema() as (url, schema): ...      a schema of its own, dropped (CASCADE) afterwards
    pytestmark = BOTH_BACKENDS                  run a module's `store` tests on SQLite and PostgreSQL

QUANEDGE_TEST_PG overrides the URL. When the server does not answer, PostgreSQL tests are skipped
locally and FAIL on CI (CI=true): the contract must hold on both backends there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_URL = os.environ.get("QUANEDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # any failure means: no PostgreSQL here
        return f"PostgreSQL not reachable at {PG_URL}: {exc}"


_WHY_NOT = _reachable()


def require_pg() -> None:
    if _WHY_NOT is not None:
        if os.environ.get("CI"):
            pytest.fail(_WHY_NOT)
        pytest.skip(_WHY_NOT)


@contextmanager
def pg_schema() -> Iterator[tuple[str, str]]:
    """(url, schema name): a fresh schema, dropped with everything in it afterwards."""
    require_pg()
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield PG_URL, schema
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


BOTH_BACKENDS = pytest.mark.parametrize("store", ["sqlite", "postgresql"], indirect=True)
