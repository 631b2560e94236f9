"""The fleet server's own errors, one tree, rooted in the project's `QuanedgeError`.

Backend errors (sqlite3, later psycopg) are translated into `StoreError` at ONE boundary, the
store backend; the API maps this tree to HTTP statuses in ONE place (`fleet_server.app`), and the
MQTT bridge maps it to "rejected" counters. Nothing else catches a third-party exception type.

    QuanedgeError                      (core.errors)
    └── FleetError
        ├── StoreError                 the storage backend failed (disk, locked, connection lost): retry
        ├── EnrollmentRefused          token unknown / expired / used up, admission
        │                              request unknown or rejected                  -> 403
        ├── AdmissionRequired          the id exists: re-key or admin approval needed (API: 202 pending)
        ├── UnknownAdmission           no pending admission request with that id    -> 404
        ├── BrokerUnavailable          the broker did not confirm an account change -> 503 (retry)
        ├── BrokerRefused              the broker refused an account change         -> 502
        ├── WebhookUnavailable         the alert webhook did not take an event (down, non-2xx): retried
        ├── NotAuthenticated           missing or unknown bearer credential         -> 401
        ├── Forbidden                  a valid credential, but not for this box     -> 403
        ├── UnknownBox                 no enrolled box with that id                 -> 404 (MQTT: rejected)
        ├── ClientGone                 the client went away before its body ended   -> 400 (to nobody)
        └── PayloadError               a malformed body; names the row and field    -> 400 / 422
            ├── BatchTooLarge          more rows or bytes than the server accepts   -> 413
            └── BadParameter           a query parameter out of its rules; names it -> 400
"""

from __future__ import annotations

from core.errors import QuanedgeError

__all__ = [
    "AdmissionRequired", "BadParameter", "BatchTooLarge", "BrokerRefused", "BrokerUnavailable", "ClientGone",
    "EnrollmentRefused", "FleetError", "Forbidden", "NotAuthenticated", "PayloadError", "StoreError",
    "UnknownAdmission", "UnknownBox", "WebhookUnavailable",
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


class AdmissionRequired(FleetError):
    """The box id exists and no current credential was shown: an admin must admit the request.

    Not an HTTP error: the enrolment API turns it into a pending request (202)."""

    code = "admission_required"


class UnknownAdmission(FleetError):
    """No pending admission request has this id."""

    code = "unknown_admission"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no pending admission request with id {request_id!r:.80}")


class BrokerUnavailable(FleetError):
    """The MQTT broker did not confirm a box account change (unreachable, timed out): retry."""

    code = "broker_unavailable"


class BrokerRefused(FleetError):
    """The MQTT broker refused a box account change (misconfigured admin account or plugin)."""

    code = "broker_refused"


class WebhookUnavailable(FleetError):
    """The alert webhook receiver did not acknowledge an event with a 2xx (unreachable, timed
    out, or another status): the delivery backs off and sends it again."""

    code = "webhook_unavailable"


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


class BadParameter(PayloadError):
    """A query parameter the route refuses (malformed, out of range, unknown, given twice):
    `field` names it. Answered 400 (the routes of `fleet_server.api.readings`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("bad_parameter", message, field=field)


class ClientGone(FleetError):
    """The client closed the connection before its request body was complete (a box that died
    mid-upload): routine, counted and logged in one line by the route, never a traceback."""

    code = "client_disconnected"
