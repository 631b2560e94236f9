"""The app's leased periodic jobs (fleet_server.leases): the replica id and retention settings and
their CLI options, /healthz and the metric showing the leases, two PostgreSQL replicas sharing the
jobs and one taking them all over when the other stops, the readings upkeep making and dropping
partitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_fleet_helpers import ADMIN
from typer.testing import CliRunner

from core.errors import ConfigError
from fleet_server.settings import ServerSettings, default_replica_id

# -- settings and CLI -----------------------------------------------------------------------------

def test_replica_id_and_retention_settings() -> None:
    base = {"db_path": "x.db", "admin_token": ADMIN}
    first, second = ServerSettings(**base).replica_id, ServerSettings(**base).replica_id
    assert first != second and first.rsplit("-", 2)[1].isdigit()
    for rid in (first, default_replica_id()):
        assert 1 <= len(rid) <= 64 and all(c.isalnum() or c in "._-" for c in rid)
    assert ServerSettings(**base, replica_id="fleet-1.zone_a").replica_id == "fleet-1.zone_a"
    assert ServerSettings(**base).retention_days == {"routine": 90, "event": 365, "alarm": 730}
    for bad in ("", "a b", "a/b", "x" * 65, "a\n", None):
        with pytest.raises(ConfigError, match=r"replica_id.*--replica-id"):
            ServerSettings(**base, replica_id=bad)
    for cls in ("routine", "event", "alarm"):
        for bad in (0, -5, 1.5, True, "30"):
            with pytest.raises(ConfigError, match=rf"retention_days_{cls}.*--retention-{cls}-days"):
                ServerSettings(**base, **{f"retention_days_{cls}": bad})


def test_serve_refuses_a_bad_retention_naming_the_option(tmp_path: Path) -> None:
    from quanedge.cli import build_app

    args = ["fleet", "serve", "--db", str(tmp_path / "f.db"), "--admin-token", ADMIN, "--retention-alarm-days", "0"]
    result = CliRunner().invoke(build_app(args), args)
    assert result.exit_code == 2 and "--retention-alarm-days" in result.output, result.output
    assert not (tmp_path / "f.db").exists()
