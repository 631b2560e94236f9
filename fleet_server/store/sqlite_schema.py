"""The SQLite schema as named, ordered migrations (sqlite-utils `Migrations`).

Each migration runs once per database, inside a transaction together with the record that it ran
(table `_sqlite_migrations`), and creates its objects with IF NOT EXISTS, so re-running one against
a file that already has its tables is harmless. Never edit an applied migration: add one.
`MIGRATIONS.pending(db)` / `.applied(db)` tell what a given file has.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

__all__ = ["MIGRATIONS", "migrate"]

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


def migrate(db: Database) -> list[str]:
    """Apply pending migrations; return the names applied now (empty when up to date)."""
    pending = [migration.name for migration in MIGRATIONS.pending(db)]
    MIGRATIONS.apply(db)
    return pending
