"""The storage seam for API users and the audit log: two small Protocols that `Store` includes.

Contract every backend keeps:
- a user's token is `new_secret()`, stored only as `hash_secret(token)`, returned once; names are
  never reused (a revoked user keeps its name), so the audit log's names stay unambiguous;
- `user_for_token` answers from storage on every call (no cache), so a revocation takes effect
  on the very next request, on every replica;
- the audit log is append-only, enforced by the backend itself (SQLite: triggers that abort
  UPDATE and DELETE), not only by the absence of a method.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fleet_server.access import AuditEntry, AuditQuery, Role, User

__all__ = ["AuditStore", "UserStore"]


@runtime_checkable
class UserStore(Protocol):
    def create_user(self, name: str, role: Role, note: str, created_by: str) -> tuple[User, str]:
        """Create an active API user; return it and its token (once). `UserExists` when the name
        is taken."""
        ...

    def list_users(self, include_revoked: bool = False) -> list[User]:
        """API users by name (active only unless `include_revoked`)."""
        ...

    def revoke_user(self, name: str, revoked_by: str) -> User:
        """Revoke the user's token at once; idempotent (a revoked user is returned as it is).
        `UnknownUser` when no user has that name."""
        ...

    def rotate_user_token(self, name: str) -> str:
        """Give an active user a new token (returned once); the old one is refused from now on.
        `UnknownUser` when no active user has that name."""
        ...

    def user_for_token(self, token: str) -> User | None:
        """The active user this token belongs to, or None (unknown or revoked)."""
        ...


@runtime_checkable
class AuditStore(Protocol):
    def record_audit(self, entry: AuditEntry) -> int:
        """Append one entry; return its id (ids grow with every entry)."""
        ...

    def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching the query, newest (highest id) first, at most `query.limit`."""
        ...
