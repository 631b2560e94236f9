"""Who may call the fleet API: roles, principals, API users, audit entries and their errors.

Roles are ordered; each includes the ones below it:

    viewer    read: boxes, readings, seq tracking, rollouts and their actions, site policies, alerts
    operator  viewer + create / pause / resume / cancel rollouts, acknowledge alerts (and box commands, later)
    admin     operator + API users, enrollment tokens, site maintenance windows, admission,
              quarantine, the audit log

The server's configured admin token is the bootstrap admin (principal "bootstrap-admin"); every
other caller is a named API user whose token is stored only as a hash (`hash_secret`).

    FleetError
    ├── UnknownUser     no (active, for a token rotation) API user with that name   -> 404
    └── UserExists      the name is taken (also by a revoked user)        -> 409
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from fleet_server.errors import FleetError

__all__ = [
    "BOOTSTRAP_ADMIN", "USER_NAME_PATTERN", "AuditEntry", "AuditQuery", "Principal", "Role", "UnknownUser",
    "User", "UserExists",
]

#: The principal name of the server's configured admin token; never a user name.
BOOTSTRAP_ADMIN = "bootstrap-admin"
#: A user name: 1-64 characters, starting with a letter or digit; e-mail addresses fit.
USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class Role(enum.Enum):
    """A role; `a.allows(b)` when a caller with role a may do what role b may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class User:
    """A named API user as stored (never with its token)."""

    name: str
    role: Role
    note: str
    created_at: float
    created_by: str
    revoked_at: float | None = None
    revoked_by: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "role": self.role.value, "note": self.note, "created_at": self.created_at,
            "created_by": self.created_by, "revoked_at": self.revoked_at, "revoked_by": self.revoked_by,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One state-changing API call and its outcome. `entry_id` is 0 until stored.

    `principal` is "anonymous" (role "") when no valid credential came with the call; `action` is
    the route's name (e.g. "create_rollout", "unknown" for no route); `target` the path called;
    `parameters` the query and the JSON body, bounded and with secrets redacted; `outcome` is
    "ok" (< 400), "refused" (4xx) or "failed" (5xx); `error` the error code of a refusal."""

    ts: float
    principal: str
    role: str
    method: str
    action: str
    target: str
    parameters: str
    source: str
    status: int
    outcome: str
    error: str = ""
    entry_id: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.entry_id, "ts": self.ts, "principal": self.principal, "role": self.role,
            "method": self.method, "action": self.action, "target": self.target,
            "parameters": self.parameters, "source": self.source, "status": self.status,
            "outcome": self.outcome, "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for reading the audit log, newest entry first.

    `principal` and `action` match exactly; `since` <= ts < `until` (unix seconds); `before`
    is a paging cursor (entries with an id below it); `limit` caps the page."""

    principal: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None
    before: int | None = None
    limit: int = 100


class UnknownUser(FleetError):
    code = "unknown_user"

    def __init__(self, name: str) -> None:
        super().__init__(f"no API user named {name!r}")


class UserExists(FleetError):
    code = "user_exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"an API user named {name!r} exists or existed (names are never reused)")
