"""The SQLite schema as named, ordered migrations (sqlite-utils `Migrations`).

Each migration runs once per database, inside a transaction together with the record that it ran
(table `_sqlite_migrations`), and creates its objects with IF NOT EXISTS, so re-running one against
a file that already has its tables is harmless. Never edit an applied migration: add one.
`MIGRATIONS.pending(db)` / `.applied(db)` tell what a given file has.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

__all__ = ["MIGRATIONS", "ROLLOUT_MIGRATIONS", "apply_migrations", "migrate", "migrate_rollouts"]

MIGRATIONS = Migrations("quanedge_fleet")


@MIGRATIONS(name="0001_enrollment_and_boxes")
def _enrollment_and_boxes(db: Database) -> None:
    db.table("enrollment_tokens").create(
        {
            "token_hash": str, "created_at": float, "expires_at": float,
            "max_uses": int, "uses": int, "note": str,
        },
        pk="token_hash",
        not_null=["created_at", "expires_at", "max_uses", "uses", "note"],
        defaults={"uses": 0, "note": ""},
        if_not_exists=True,
    )
    db.table("boxes").create(
        {
            "box_id": str, "hardware": str, "site": str, "agent_version": str, "tags": str,
            "credential_hash": str, "enrolled_at": float, "last_seen": float,
            "max_seq": int, "online": int, "status_ts": float,
        },
        pk="box_id",
        not_null=[
            "hardware", "site", "agent_version", "tags", "credential_hash", "enrolled_at",
            "max_seq", "online",
        ],
        defaults={"max_seq": 0, "online": 0, "tags": "[]"},
        if_not_exists=True,
    )
    db.table("boxes").create_index(["credential_hash"], unique=True, if_not_exists=True)


@MIGRATIONS(name="0002_readings")
def _readings(db: Database) -> None:
    db.table("readings").create(
        {
            "box_id": str, "seq": int, "ts": float, "device": str, "point": str,
            "value": float, "unit": str, "quality": int, "cls": str, "text": str,
        },
        pk=("box_id", "seq"),
        not_null=["ts", "device", "point", "unit", "quality", "cls"],
        if_not_exists=True,
    )
    # The primary key serves the unfiltered page query; this one serves device/point filters.
    db.table("readings").create_index(
        ["box_id", "device", "point", "seq"], index_name="readings_by_point", if_not_exists=True
    )


@MIGRATIONS(name="0003_readings_by_time")
def _readings_by_time(db: Database) -> None:
    # Readings out in one order across boxes (fleet_server.readings_out): keyset pages on
    # (ts, box_id, seq), and since/until ranges. PostgreSQL has had it from its first schema.
    db.table("readings").create_index(
        ["ts", "box_id", "seq"], index_name="readings_by_time", if_not_exists=True
    )


def apply_migrations(migrations: Migrations, db: Database) -> list[str]:
    """Apply one named set's pending migrations; return the names applied now (empty when up to
    date). Every set (core, rollouts, and those of the store mixins) is applied through this."""
    pending = [migration.name for migration in migrations.pending(db)]
    migrations.apply(db)
    return pending


def migrate(db: Database) -> list[str]:
    """Apply pending core migrations; return the names applied now (empty when up to date)."""
    return apply_migrations(MIGRATIONS, db)


# -- rollouts (issue 4): their own named set, so the core set above stays as it is ---------------

ROLLOUT_MIGRATIONS = Migrations("quanedge_fleet_rollouts")


@ROLLOUT_MIGRATIONS(name="0001_inventory_sites_rollouts")
def _rollouts(db: Database) -> None:
    for sql in _ROLLOUT_DDL:
        db.execute(sql)


_ROLLOUT_DDL = (
    # What each box reports it runs; box_versions flattens it for target filters.
    "CREATE TABLE IF NOT EXISTS box_inventory (box_id TEXT PRIMARY KEY, hardware TEXT NOT NULL,"
    " agent_version TEXT NOT NULL, models TEXT NOT NULL, firmware TEXT NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS box_versions (box_id TEXT NOT NULL, kind TEXT NOT NULL,"
    " component TEXT NOT NULL, version TEXT NOT NULL, PRIMARY KEY (box_id, kind, component)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS site_policies (site TEXT PRIMARY KEY, policy TEXT NOT NULL, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rollouts (rollout_id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,"
    " target_name TEXT NOT NULL, version TEXT NOT NULL, component TEXT NOT NULL, hardware TEXT NOT NULL,"
    " filter TEXT NOT NULL, status TEXT NOT NULL, pause_reason TEXT, total INTEGER NOT NULL,"
    " current_wave INTEGER NOT NULL, timeout_s INTEGER NOT NULL, rate_per_min REAL,"
    " respect_windows INTEGER NOT NULL, min_finished INTEGER NOT NULL, tokens REAL NOT NULL,"
    " tokens_at REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, rev INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rollouts_by_status ON rollouts (status, created_at)",
    "CREATE TABLE IF NOT EXISTS rollout_waves (rollout_id TEXT NOT NULL, wave INTEGER NOT NULL,"
    " capacity INTEGER NOT NULL, success_pct REAL NOT NULL, error_pct REAL NOT NULL,"
    " assigned INTEGER NOT NULL DEFAULT 0, succeeded INTEGER NOT NULL DEFAULT 0,"
    " failed INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,"
    " canceled INTEGER NOT NULL DEFAULT 0, errors_acked INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (rollout_id, wave)) WITHOUT ROWID",
    # One row per target box; it becomes the box's action when assigned (state != 'pending').
    "CREATE TABLE IF NOT EXISTS rollout_boxes (rollout_id TEXT NOT NULL, box_id TEXT NOT NULL,"
    " state TEXT NOT NULL, wave INTEGER, reason TEXT, reason_code TEXT, detail TEXT,"
    " assigned_at REAL, updated_at REAL, deadline REAL, open INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (rollout_id, box_id)) WITHOUT ROWID",
    # A box never runs two updates at once: at most one open action per box, enforced here.
    "CREATE UNIQUE INDEX IF NOT EXISTS one_open_action_per_box ON rollout_boxes (box_id) WHERE open = 1",
    "CREATE INDEX IF NOT EXISTS pending_targets_by_box ON rollout_boxes (box_id) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS open_actions_by_deadline ON rollout_boxes (deadline) WHERE open = 1",
)


def migrate_rollouts(db: Database) -> list[str]:
    """Apply pending rollout migrations; return the names applied now."""
    return apply_migrations(ROLLOUT_MIGRATIONS, db)
