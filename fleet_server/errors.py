"""The fleet server's own errors, one tree, rooted in the project's `QuanedgeError`.

Backend errors (sqlite3, later psycopg) are translated into `StoreError` at ONE boundary, the
store backend; the API maps this tree to HTTP statuses in ONE place (`fleet_server.app`), and the
MQTT bridge maps it to "rejected" counters. Nothing else catches a third-party exception type.

    QuanedgeError                      (agent.errors)
    └── FleetError
        ├── StoreError                 the storage backend failed (disk, locked, connection lost): retry
        ├── EnrollmentRefused          token unknown / expired / used up           -> 403
        │   └── BoxIdTaken             box id already enrolled by another hardware  -> 409
        ├── NotAuthenticated           missing or unknown bearer credential         -> 401
        ├── Forbidden                  a valid credential, but not for this box     -> 403
        ├── UnknownBox                 no enrolled box with that id                 -> 404 (MQTT: rejected)
        └── PayloadError               a malformed body; names the row and field    -> 400 / 422
            └── BatchTooLarge          more rows or bytes than the server accepts   -> 413
"""

from __future__ import annotations

from agent.errors import QuanedgeError

__all__ = [
    "BatchTooLarge", "BoxIdTaken", "EnrollmentRefused", "FleetError", "Forbidden",
    "NotAuthenticated", "PayloadError", "StoreError", "UnknownBox",
]


class FleetError(QuanedgeError):
    """Root of every error the fleet server raises on purpose.

    `code` is a short machine-readable reason sent to clients next to the human message.
    """

    code = "fleet_error"


class StoreError(FleetError):
    """The storage backend failed; nothing of the failed call was written."""

    code = "store_unavailable"


class EnrollmentRefused(FleetError):
    """An enrollment attempt was refused; `code` says why (unknown_token, expired_token, ...)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class BoxIdTaken(EnrollmentRefused):
    """The box id is already enrolled with a different hardware identity."""

    def __init__(self, box_id: str) -> None:
        super().__init__(
            "box_id_taken", f"box id {box_id!r} is already enrolled by a different hardware identity"
        )


class NotAuthenticated(FleetError):
    """No bearer credential, or one the server does not know."""

    code = "not_authenticated"


class Forbidden(FleetError):
    """The caller is authenticated but not allowed to act for this box."""

    code = "forbidden"


class UnknownBox(FleetError):
    """No enrolled box has this id."""

    code = "unknown_box"

    def __init__(self, box_id: str) -> None:
        self.box_id = box_id
        super().__init__(f"no enrolled box with id {box_id!r}")


class PayloadError(FleetError):
    """A request or message body is malformed; `row` and `field` locate the fault when known."""

    def __init__(
        self, code: str, message: str, *, row: int | None = None, field: str | None = None
    ) -> None:
        self.code = code
        self.row = row
        self.field = field
        super().__init__(message)


class BatchTooLarge(PayloadError):
    """More rows (or bytes) than the server accepts in one batch."""

    def __init__(self, message: str) -> None:
        super().__init__("batch_too_large", message)
