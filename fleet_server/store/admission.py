"""The admission part of the storage seam: enrolment, re-key, pending requests, revocation.

Rules every backend keeps (Mender's admission, adapted):
- a NEW box id with a valid enrolment token is accepted at once (the token is the admin's
  pre-authorisation);
- an id that EXISTS is accepted only with the box's current credential (re-key: the credential
  rotates, site/tags stay, no token is spent); without it (or with a wrong one) the request becomes
  PENDING until an admin accepts or rejects it. A wrong credential makes a request pending whether
  the id exists or not, so a credential never tells an outsider which ids exist;
- a token problem is answered the same whatever the id;
- revoking a box makes its credential dead at once; only an admin-accepted request brings it back.
The request secret (returned once, to poll with) is stored hashed, like every other secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["AdmissionRequest", "AdmissionStore", "Application", "Route"]

Route = Literal["accept", "admission"]


@dataclass(frozen=True, slots=True)
class Application:
    """What a box says about itself when it enrols."""

    box_id: str
    hardware: str
    site: str = ""
    agent_version: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """A request an admin decides on (state: pending | accepted | rejected | issued)."""

    request_id: str
    box_id: str
    hardware: str
    site: str
    agent_version: str
    tags: tuple[str, ...]
    requested_at: float
    state: str
    decided_at: float | None = None
    box_exists: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "request_id": self.request_id, "box_id": self.box_id, "hardware": self.hardware,
            "site": self.site, "agent_version": self.agent_version, "tags": list(self.tags),
            "requested_at": self.requested_at, "state": self.state, "decided_at": self.decided_at,
            "box_exists": self.box_exists,
        }


class AdmissionStore(Protocol):
    def enroll_route(self, token: str | None, box_id: str, credential: str | None) -> Route:
        """Where an enrolment goes, changing nothing: "accept" (new id with a valid token, or the
        box's current credential) or "admission". Raises `EnrollmentRefused` for a missing or bad
        token when no current credential is given."""
        ...

    def enroll(
        self, token: str | None, box_id: str, hardware: str, site: str, agent_version: str,
        tags: Sequence[str], *, credential: str | None = None,
    ) -> str:
        """Enrol a new box (spends one token use) or re-key an existing one with its current
        `credential` (rotated; site/tags kept). Returns the new credential (once). Raises
        `AdmissionRequired` (nothing changed) when the route is "admission"."""
        ...

    def request_admission(self, token: str, application: Application) -> str:
        """Spend one token use and record a pending request; return its secret (once)."""
        ...

    def admission_state(self, request_secret: str) -> tuple[str, str]:
        """(state, box_id), state "pending" or "accepted"; `EnrollmentRefused("not_admitted")` for an unknown, rejected
        or already issued request (one answer for all three)."""
        ...

    def claim_admission(self, request_secret: str) -> tuple[str, str]:
        """For an accepted request: (re)enrol the box and return (box_id, credential) once."""
        ...

    def admission_requests(self, state: str | None = "pending") -> list[AdmissionRequest]:
        """Requests, oldest first, optionally in one state."""
        ...

    def decide_admission(self, request_id: str, accept: bool) -> AdmissionRequest:
        """Accept or reject a pending request. `UnknownAdmission` when there is no pending one."""
        ...

    def revoke_box(self, box_id: str) -> None:
        """Make the box's credential dead at once (idempotent). Raises `UnknownBox`."""
        ...

    def is_revoked(self, box_id: str) -> bool:
        """Whether the box was revoked and not re-admitted since."""
        ...
