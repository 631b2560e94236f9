"""API users and the audit log in the SQLite store: hashed tokens, revocation, append-only log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pg_support import BOTH_BACKENDS
from test_fleet_helpers import Clock, dump_text

from fleet_server.access import AuditEntry, AuditQuery, Role, UnknownUser, UserExists
from fleet_server.store.base import hash_secret
from fleet_server.store.sql_audit import AUDIT_MIGRATIONS
from fleet_server.store.sql_users import USER_MIGRATIONS
from fleet_server.store.sqlite import SqliteStore


def entry(ts: float, principal: str = "alice", action: str = "create_rollout", status: int = 201) -> AuditEntry:
    return AuditEntry(ts=ts, principal=principal, role="operator", method="POST", action=action,
                      target="/api/v1/rollouts", parameters="{}", source="127.0.0.1", status=status,
                      outcome="ok" if status < 400 else "refused")


@BOTH_BACKENDS
def test_users_are_created_listed_and_found_by_token_stored_only_as_hash(store: SqliteStore, tmp_path: Path,
                                                                        clock: Clock) -> None:
    created, token = store.create_user("alice", Role.OPERATOR, "night shift", "bootstrap-admin")
    assert len(token) >= 43
    user = store.user_for_token(token)
    assert user == created
    assert user is not None and (user.name, user.role, user.note, user.created_by) == (
        "alice", Role.OPERATOR, "night shift", "bootstrap-admin")
    assert user.created_at == clock.now and user.active
    assert store.user_for_token(token + "x") is None and store.user_for_token("") is None
    dump = dump_text(store)
    assert token not in dump and hash_secret(token) in dump


@BOTH_BACKENDS
def test_revocation_takes_effect_at_once_and_names_are_never_reused(store: SqliteStore, clock: Clock) -> None:
    _, token = store.create_user("bob", Role.VIEWER, "", "root")
    store.create_user("carol", Role.ADMIN, "", "root")
    clock.now += 5
    revoked = store.revoke_user("bob", "carol")
    assert (revoked.revoked_at, revoked.revoked_by, revoked.active) == (clock.now, "carol", False)
    assert store.user_for_token(token) is None
    assert store.revoke_user("bob", "someone-else") == revoked  # idempotent, first revocation kept
    assert [u.name for u in store.list_users()] == ["carol"]
    assert [u.name for u in store.list_users(include_revoked=True)] == ["bob", "carol"]
    with pytest.raises(UserExists):
        store.create_user("bob", Role.VIEWER, "", "root")
    with pytest.raises(UserExists):
        store.create_user("bootstrap-admin", Role.ADMIN, "", "root")
    with pytest.raises(UnknownUser):
        store.revoke_user("nobody", "root")
    with pytest.raises(UnknownUser):
        store.rotate_user_token("bob")   # revoked: stays revoked


@BOTH_BACKENDS
def test_rotation_replaces_the_token(store: SqliteStore) -> None:
    _, old = store.create_user("ann", Role.OPERATOR, "", "root")
    new = store.rotate_user_token("ann")
    assert new != old and store.user_for_token(old) is None
    assert store.user_for_token(new).name == "ann"  # type: ignore[union-attr]


@BOTH_BACKENDS
def test_audit_log_is_append_only_in_the_database(store: SqliteStore, tmp_path: Path) -> None:
    first = store.record_audit(entry(1.0))
    assert store.record_audit(entry(2.0)) > first
    statements = ("UPDATE audit_log SET status = 200 WHERE id = 1", "DELETE FROM audit_log WHERE id = 1",
                  "UPDATE audit_log SET principal = 'mallory'", "DELETE FROM audit_log")
    if isinstance(store, SqliteStore):
        other = sqlite3.connect(tmp_path / "fleet.db")  # any writer is held to it, not only the store
        for sql in statements:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                other.execute(sql)
            other.rollback()
        other.close()
    else:
        import psycopg

        with psycopg.connect(store.url, options=f"-c search_path={store.schema}") as pg:
            for sql in (*statements, "TRUNCATE audit_log"):
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    pg.execute(sql)
                pg.rollback()
    assert [e.ts for e in store.audit_entries(AuditQuery())] == [2.0, 1.0]


@BOTH_BACKENDS
def test_audit_filters_and_paging(store: SqliteStore) -> None:
    for i in range(10):
        store.record_audit(entry(100.0 + i, principal="alice" if i % 2 else "bob",
                                 action="revoke_user" if i >= 8 else "create_rollout"))
    assert [e.ts for e in store.audit_entries(AuditQuery(principal="alice"))] == [109, 107, 105, 103, 101]
    assert [e.ts for e in store.audit_entries(AuditQuery(action="revoke_user"))] == [109, 108]
    assert [e.ts for e in store.audit_entries(AuditQuery(since=102, until=105))] == [104, 103, 102]
    page = store.audit_entries(AuditQuery(limit=4))
    assert [e.ts for e in page] == [109, 108, 107, 106]
    rest = store.audit_entries(AuditQuery(limit=100, before=page[-1].entry_id))
    assert [e.ts for e in rest] == [105, 104, 103, 102, 101, 100]
    assert rest[0].to_dict()["principal"] == "alice" and rest[0].to_dict()["id"] == page[-1].entry_id - 1
    with pytest.raises(ValueError):
        store.audit_entries(AuditQuery(limit=0))


def test_user_and_audit_migrations_are_their_own_named_sets(store: SqliteStore) -> None:
    assert store.user_migrations_applied == ["0001_api_users"]
    assert store.audit_migrations_applied == ["0001_audit_log"]
    assert USER_MIGRATIONS.pending(store._db) == [] and AUDIT_MIGRATIONS.pending(store._db) == []
    again = SqliteStore(store.path)
    assert (again.user_migrations_applied, again.audit_migrations_applied) == ([], [])
    again.close()
