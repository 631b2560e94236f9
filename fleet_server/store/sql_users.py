"""API users for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary), with their own
named migration set, so the core and rollout sets stay as they are.

Only the token's hash is stored (unique index); a lookup reads the table every time (no cache),
so a revocation is seen by the next request.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.access import BOOTSTRAP_ADMIN, Role, UnknownUser, User, UserExists
from fleet_server.store.base import hash_secret, new_secret
from fleet_server.store.sql import SqlConn

__all__ = ["USER_MIGRATIONS", "UserTables"]

USER_MIGRATIONS = Migrations("quanedge_fleet_users")

_COLS = "name, role, note, created_at, created_by, revoked_at, revoked_by"


@USER_MIGRATIONS(name="0001_api_users")
def _api_users(db: Database) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS api_users (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
        " token_hash TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL,"
        " created_by TEXT NOT NULL, revoked_at REAL, revoked_by TEXT)"
    )
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS api_users_by_token ON api_users (token_hash)")


class UserTables:
    """`UserStore` mixed into `SqliteStore` and `PgStore` (SQL both run, fleet_server/store/sql.py)."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]
    _clock: Callable[[], float]

    def create_user(self, name: str, role: Role, note: str, created_by: str) -> tuple[User, str]:
        if not isinstance(role, Role):
            raise ValueError(f"role must be a Role, got {role!r:.40}")
        if name == BOOTSTRAP_ADMIN:
            raise UserExists(name)
        token = new_secret()
        user = User(name=name, role=role, note=note, created_at=self._clock(), created_by=created_by)
        with self._conn(write=True, lock="admission") as conn:
            if conn.execute("SELECT 1 FROM api_users WHERE name = ?", (name,)).fetchone() is not None:
                raise UserExists(name)
            conn.execute(
                "INSERT INTO api_users (name, role, token_hash, note, created_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, role.value, hash_secret(token), note, user.created_at, created_by),
            )
        return user, token

    def list_users(self, include_revoked: bool = False) -> list[User]:
        sql = f"SELECT {_COLS} FROM api_users"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY name").fetchall()
        return [_user(row) for row in rows]

    def revoke_user(self, name: str, revoked_by: str) -> User:
        with self._conn(write=True, lock="admission") as conn:
            conn.execute(
                "UPDATE api_users SET revoked_at = ?, revoked_by = ? WHERE name = ? AND revoked_at IS NULL",
                (self._clock(), revoked_by, name),
            )
            row = conn.execute(f"SELECT {_COLS} FROM api_users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownUser(name)
        return _user(row)

    def rotate_user_token(self, name: str) -> str:
        token = new_secret()
        with self._conn(write=True, lock="admission") as conn:
            if not conn.execute("UPDATE api_users SET token_hash = ? WHERE name = ? AND revoked_at IS NULL",
                                (hash_secret(token), name)).rowcount:
                raise UnknownUser(name)
        return token

    def user_for_token(self, token: str) -> User | None:
        with self._conn() as conn:
            row = conn.execute(
                f"SELECT {_COLS} FROM api_users WHERE token_hash = ? AND revoked_at IS NULL",
                (hash_secret(token),),
            ).fetchone()
        return None if row is None else _user(row)


def _user(row: tuple[Any, ...]) -> User:
    name, role, note, created_at, created_by, revoked_at, revoked_by = row
    return User(name=name, role=Role(role), note=note, created_at=created_at, created_by=created_by,
                revoked_at=revoked_at, revoked_by=revoked_by)
