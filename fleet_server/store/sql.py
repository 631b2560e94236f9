"""What differs between the SQL backends, in one place: the store mixins (`sql_*.py`) write
their SQL once, in the subset SQLite and PostgreSQL share (`?` placeholders, `ON CONFLICT`
upserts, `RETURNING`), and ask the dialect for the few fragments that differ.

- `json_values(expr)`: a table of the values of a JSON array held in `expr` (a text column or a
  `?` parameter), with one column named `value`.
- `row_order(table)`: an expression ordering a table's rows by insertion (SQLite's rowid; a
  `row_order` identity column in PostgreSQL), for ties on a timestamp.
- `filter_only(column)`: the column in a condition that must filter rows but not pick the index
  (SQLite `+column`: its planner has no statistics and, given `box_id = ?`, would read a box's
  whole history through its box index and sort it for every page of a time-ordered read;
  PostgreSQL: the column, its planner decides on statistics).
- `lock(conn, domain)`: serialize the decisions of one domain ("rollouts", "admission", ...) across
  every server process on the database, for the rest of the current transaction. SQLite needs
  nothing (one process, one writer); PostgreSQL takes a transaction-scoped advisory lock, see
  `fleet_server.store.pg`.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

__all__ = ["POSTGRES", "SQLITE", "SqlDialect", "domain_key"]


class SqlDialect(Protocol):
    name: str

    def json_values(self, expr: str) -> str: ...

    def row_order(self, table: str) -> str: ...

    def filter_only(self, column: str) -> str: ...

    def lock(self, conn: Any, domain: str) -> None: ...


def domain_key(domain: str) -> int:
    """A stable 63-bit advisory-lock key for a domain name (the same in every process)."""
    return zlib.crc32(b"quanedge:" + domain.encode()) | (0x5145 << 32)


class _Sqlite:
    name = "sqlite"

    def json_values(self, expr: str) -> str:
        return f"json_each({expr})"

    def row_order(self, table: str) -> str:
        return f"{table}.rowid"

    def filter_only(self, column: str) -> str:
        return f"+{column}"  # unary plus: the same value, and no index is chosen for it

    def lock(self, conn: Any, domain: str) -> None:
        """Nothing: every write transaction already holds the store's one lock."""


class _Postgres:
    name = "postgresql"

    def json_values(self, expr: str) -> str:
        return f"jsonb_array_elements_text(({expr})::jsonb)"

    def row_order(self, table: str) -> str:
        return f"{table}.row_order"

    def filter_only(self, column: str) -> str:
        return column

    def lock(self, conn: Any, domain: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (domain_key(domain),))


SQLITE: SqlDialect = _Sqlite()
POSTGRES: SqlDialect = _Postgres()


class SqlCursor(Protocol):
    """What the mixins read from a statement (sqlite3.Cursor and psycopg's cursor both are one)."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Any: ...


class SqlConn(Protocol):
    """A connection inside the store's transaction, `?` placeholders (sqlite3.Connection is one;
    PostgreSQL's is `fleet_server.store.pg.PgConn`)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...
