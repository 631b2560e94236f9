"""Admission storage for `SqliteStore` and `PgStore` (a mixin: the store's connection, lock and error boundary).

Enrolment, re-key, pending requests decided by an admin, and revocation; the rules are
`fleet_server.store.admission`'s. Its tables come from their own named migration set,
`ADMISSION_MIGRATIONS`, so the core and rollout sets stay as they are. Every decision is one
write transaction that re-reads what it decides on.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from fleet_server.errors import AdmissionRequired, EnrollmentRefused, UnknownAdmission, UnknownBox
from fleet_server.store.admission import AdmissionRequest, Application, Route
from fleet_server.store.base import check_box_id, hash_secret, new_secret
from fleet_server.store.sql import SqlConn

__all__ = ["ADMISSION_MIGRATIONS", "AdmissionTables"]

ADMISSION_MIGRATIONS = Migrations("quanedge_fleet_admission")


@ADMISSION_MIGRATIONS(name="0001_admission_requests_and_revocations")
def _admission(db: Database) -> None:
    db.execute(
        "CREATE TABLE IF NOT EXISTS admission_requests (request_id TEXT PRIMARY KEY,"
        " secret_hash TEXT NOT NULL UNIQUE, box_id TEXT NOT NULL, hardware TEXT NOT NULL,"
        " site TEXT NOT NULL, agent_version TEXT NOT NULL, tags TEXT NOT NULL,"
        " requested_at REAL NOT NULL, state TEXT NOT NULL, decided_at REAL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS admission_by_state ON admission_requests (state, requested_at)")
    db.execute("CREATE TABLE IF NOT EXISTS box_revocations (box_id TEXT PRIMARY KEY, revoked_at REAL NOT NULL)")


_REQUEST_COLS = (
    "request_id, box_id, hardware, site, agent_version, tags, requested_at, state, decided_at,"
    " EXISTS (SELECT 1 FROM boxes b WHERE b.box_id = admission_requests.box_id)"
)
_NOT_ADMITTED = "no admitted enrolment request matches"


class AdmissionTables:
    """Admission methods of the `Store` Protocol; mixed into `SqliteStore` and `PgStore`."""

    _conn: Callable[..., AbstractContextManager[SqlConn]]
    _clock: Callable[[], float]
    _credentials_changed: Callable[[SqlConn], None]

    # -- tokens ------------------------------------------------------------------------------

    def create_enrollment_token(self, ttl_s: float, max_uses: int, note: str = "") -> str:
        if not isinstance(ttl_s, (int, float)) or isinstance(ttl_s, bool) or not ttl_s > 0:
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        if not isinstance(max_uses, int) or isinstance(max_uses, bool) or max_uses < 1:
            raise ValueError(f"max_uses must be a positive integer, got {max_uses!r}")
        token = new_secret()
        now = self._clock()
        with self._conn(write=True, lock="admission") as conn:
            conn.execute(
                "INSERT INTO enrollment_tokens (token_hash, created_at, expires_at, max_uses, uses, note)"
                " VALUES (?, ?, ?, ?, 0, ?)",
                (hash_secret(token), now, now + float(ttl_s), max_uses, note),
            )
        return token

    def _check_token(self, conn: SqlConn, token: str | None, now: float) -> None:
        row = None if token is None else conn.execute(
            "SELECT expires_at, max_uses, uses FROM enrollment_tokens WHERE token_hash = ?",
            (hash_secret(token),),
        ).fetchone()
        if row is None:
            raise EnrollmentRefused("unknown_token", "enrollment token is not known to this server")
        expires_at, max_uses, uses = row
        if now >= expires_at:
            raise EnrollmentRefused("expired_token", "enrollment token has expired")
        if uses >= max_uses:
            raise EnrollmentRefused("token_used_up", f"enrollment token has been used {uses} of {max_uses} times")

    def _spend_token(self, conn: SqlConn, token: str | None, now: float) -> None:
        self._check_token(conn, token, now)
        assert token is not None
        conn.execute("UPDATE enrollment_tokens SET uses = uses + 1 WHERE token_hash = ?", (hash_secret(token),))

    # -- enrolment and re-key ----------------------------------------------------------------

    def _route(self, conn: SqlConn, token: str | None, box_id: str, credential: str | None,
               now: float) -> Route | str:
        """"rekey" (current credential shown), "accept" (new id, valid token) or "admission"."""
        if credential is not None:
            row = conn.execute("SELECT box_id FROM boxes WHERE credential_hash = ?",
                               (hash_secret(credential),)).fetchone()
            if row is not None and row[0] == box_id:
                return "rekey"
        self._check_token(conn, token, now)
        if credential is not None:  # a wrong credential: pending, whether the id exists or not
            return "admission"
        exists = conn.execute("SELECT 1 FROM boxes WHERE box_id = ?", (box_id,)).fetchone()
        return "admission" if exists else "accept"

    def enroll_route(self, token: str | None, box_id: str, credential: str | None) -> Route:
        check_box_id(box_id)
        with self._conn() as conn:
            route = self._route(conn, token, box_id, credential, self._clock())
        return "admission" if route == "admission" else "accept"

    def enroll(
        self, token: str | None, box_id: str, hardware: str, site: str, agent_version: str,
        tags: Sequence[str], *, credential: str | None = None,
    ) -> str:
        app = _application(box_id, hardware, site, agent_version, tags)
        new_credential = new_secret()
        now = self._clock()
        with self._conn(write=True, lock="admission") as conn:
            route = self._route(conn, token, box_id, credential, now)
            if route == "admission":
                raise AdmissionRequired(f"box id {box_id!r} needs its current credential or an admin's approval")
            if route == "rekey":  # the box proved itself: rotate, keep site and tags
                conn.execute("UPDATE boxes SET hardware = ?, agent_version = ?, credential_hash = ?"
                             " WHERE box_id = ?",
                             (app.hardware, app.agent_version, hash_secret(new_credential), box_id))
                self._credentials_changed(conn)
            else:
                self._spend_token(conn, token, now)
                _insert_box(conn, app, new_credential, now)
        return new_credential

    # -- pending requests ------------------------------------------------------------------------

    def request_admission(self, token: str, application: Application) -> str:
        app = _application(application.box_id, application.hardware, application.site,
                           application.agent_version, application.tags)
        secret = new_secret()
        now = self._clock()
        with self._conn(write=True, lock="admission") as conn:
            self._spend_token(conn, token, now)
            conn.execute(
                "INSERT INTO admission_requests (request_id, secret_hash, box_id, hardware, site,"
                " agent_version, tags, requested_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                ("adm-" + secrets.token_hex(8), hash_secret(secret), app.box_id, app.hardware, app.site,
                 app.agent_version, json.dumps(list(app.tags)), now),
            )
        return secret

    def admission_state(self, request_secret: str) -> tuple[str, str]:
        with self._conn() as conn:
            row = conn.execute("SELECT state, box_id FROM admission_requests WHERE secret_hash = ?",
                               (hash_secret(request_secret),)).fetchone()
        if row is None or row[0] not in ("pending", "accepted"):
            raise EnrollmentRefused("not_admitted", _NOT_ADMITTED)
        return str(row[0]), str(row[1])

    def claim_admission(self, request_secret: str) -> tuple[str, str]:
        credential = new_secret()
        now = self._clock()
        with self._conn(write=True, lock="admission") as conn:
            row = conn.execute(
                "SELECT request_id, box_id, hardware, site, agent_version, tags FROM admission_requests"
                " WHERE secret_hash = ? AND state = 'accepted'", (hash_secret(request_secret),)).fetchone()
            if row is None:
                raise EnrollmentRefused("not_admitted", _NOT_ADMITTED)
            request_id, box_id, hardware, site, agent_version, tags = row
            updated = conn.execute(  # an existing box keeps its site and tags (the admin saw them)
                "UPDATE boxes SET hardware = ?, agent_version = ?, credential_hash = ? WHERE box_id = ?",
                (hardware, agent_version, hash_secret(credential), box_id)).rowcount
            if updated:
                self._credentials_changed(conn)
            else:
                app = Application(box_id, hardware, site, agent_version, tuple(json.loads(tags)))
                _insert_box(conn, app, credential, now)
            conn.execute("DELETE FROM box_revocations WHERE box_id = ?", (box_id,))
            conn.execute("UPDATE admission_requests SET state = 'issued' WHERE request_id = ?", (request_id,))
        return box_id, credential

    def admission_requests(self, state: str | None = "pending") -> list[AdmissionRequest]:
        sql = f"SELECT {_REQUEST_COLS} FROM admission_requests"
        args: list[Any] = []
        if state is not None:
            sql += " WHERE state = ?"
            args.append(state)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY requested_at, request_id", args).fetchall()
        return [_request(row) for row in rows]

    def decide_admission(self, request_id: str, accept: bool) -> AdmissionRequest:
        now = self._clock()
        with self._conn(write=True, lock="admission") as conn:
            if not conn.execute(
                "UPDATE admission_requests SET state = ?, decided_at = ? WHERE request_id = ? AND state = 'pending'",
                ("accepted" if accept else "rejected", now, request_id),
            ).rowcount:
                raise UnknownAdmission(request_id)
            row = conn.execute(f"SELECT {_REQUEST_COLS} FROM admission_requests WHERE request_id = ?",
                               (request_id,)).fetchone()
        return _request(row)

    # -- decommission --------------------------------------------------------------------------

    def revoke_box(self, box_id: str) -> None:
        now = self._clock()
        with self._conn(write=True, lock="admission") as conn:
            # The hash of a secret nobody holds: the old credential matches nothing from now on.
            if not conn.execute("UPDATE boxes SET credential_hash = ? WHERE box_id = ?",
                                (hash_secret(new_secret()), box_id)).rowcount:
                raise UnknownBox(box_id)
            conn.execute("INSERT INTO box_revocations (box_id, revoked_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                         (box_id, now))
            self._credentials_changed(conn)

    def is_revoked(self, box_id: str) -> bool:
        with self._conn() as conn:
            return conn.execute("SELECT 1 FROM box_revocations WHERE box_id = ?", (box_id,)).fetchone() is not None


def _application(box_id: str, hardware: str, site: str, agent_version: str, tags: Sequence[str]) -> Application:
    check_box_id(box_id)
    for name, text in (("hardware", hardware), ("site", site), ("agent_version", agent_version)):
        if not isinstance(text, str):
            raise ValueError(f"{name} must be a string, got {text!r:.80}")
    if not hardware:
        raise ValueError("hardware must be a non-empty identity string")
    if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
        raise ValueError(f"tags must be a list of strings, got {tags!r:.80}")
    return Application(box_id, hardware, site, agent_version, tuple(tags))


def _insert_box(conn: SqlConn, app: Application, credential: str, now: float) -> None:
    conn.execute(
        "INSERT INTO boxes (box_id, hardware, site, agent_version, tags, credential_hash, enrolled_at,"
        " max_seq, online) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)",
        (app.box_id, app.hardware, app.site, app.agent_version, json.dumps(list(app.tags)),
         hash_secret(credential), now),
    )


def _request(row: tuple[Any, ...]) -> AdmissionRequest:
    request_id, box_id, hardware, site, agent_version, tags, requested_at, state, decided_at, exists = row
    return AdmissionRequest(
        request_id=request_id, box_id=box_id, hardware=hardware, site=site, agent_version=agent_version,
        tags=tuple(json.loads(tags)), requested_at=requested_at, state=state, decided_at=decided_at,
        box_exists=bool(exists),
    )
