"""The `[updater]` section of the box config, validated once into a frozen `UpdaterConfig`.

    [updater]
    enabled = true                    # default false: a box updates only when told to
    server = "https://fleet.example"  # check-in server; default: the server recorded at enrollment
    root = "updater"                  # slots, journal, caches; relative to the config file's folder;
                                      # default <box.data_dir>/updater
    trusted_root = "tuf-root.json"    # the fleet's TUF root.json shipped with the image (required when enabled)
    poll_interval_s = 300             # until the server names its own poll_interval_s
    health_deadline_s = 120           # a new agent must be healthy within this (devices online, uplink sent > 0)
    max_boot_attempts = 2             # boots of a new agent version before rolling back
    model_health_s = 30               # a swapped model must run this long without failing
    clock_slack_s = 3600              # accept TUF metadata that expired less than this ago (RTC-less boxes)
    stop_grace_s = 20                 # SIGTERM -> SIGKILL grace when the supervisor restarts the agent

`parse_updater(table, data_dir=..., base_dir=...)` is called by agent.config.load_config and by
the supervisor, which reads only [box], [health] and [updater] so that it can still start an
agent whose newer config keys it does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.config_reader import Table

__all__ = ["UpdaterConfig", "parse_updater"]

_URL_RE = re.compile(r"^https?://[^\s/]+(/.*)?$")


@dataclass(frozen=True, slots=True)
class UpdaterConfig:
    enabled: bool
    root: Path
    server: str | None = None
    trusted_root: Path | None = None
    poll_interval_s: float = 300.0
    health_deadline_s: float = 120.0
    max_boot_attempts: int = 2
    model_health_s: float = 30.0
    clock_slack_s: float = 3600.0
    stop_grace_s: float = 20.0

    def __post_init__(self) -> None:
        if self.enabled and self.trusted_root is None:
            raise ValueError("an enabled updater needs trusted_root (the fleet's TUF root.json)")
        if self.poll_interval_s <= 0 or self.health_deadline_s <= 0 or self.model_health_s < 0:
            raise ValueError("updater intervals must be positive")
        if self.max_boot_attempts < 1:
            raise ValueError("max_boot_attempts must be >= 1")

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.db"


def parse_updater(t: Table | None, *, data_dir: Path, base_dir: Path) -> UpdaterConfig:
    """Validate `[updater]` (None: the section is absent, updates disabled)."""
    default_root = data_dir / "updater"
    if t is None:
        return UpdaterConfig(enabled=False, root=default_root)
    enabled = t.bool("enabled", False)
    server = t.str("server", None, pattern=_URL_RE, expected="an http:// or https:// URL")
    root_s = t.str("root", None)
    root = default_root if root_s is None else _resolve(root_s, base_dir)
    trusted_s = t.str("trusted_root", None)
    trusted = None if trusted_s is None else _resolve(trusted_s, base_dir)
    if enabled and trusted is None:
        raise t.error("trusted_root", "an enabled updater needs the fleet's TUF root", None,
                      'the path of root.json shipped with the image, e.g. "tuf-root.json"')
    if trusted is not None and enabled and not trusted.is_file():
        raise t.error("trusted_root", "file not found", str(trusted), "the fleet's TUF root.json")
    cfg = UpdaterConfig(
        enabled=enabled,
        root=root,
        server=server,
        trusted_root=trusted,
        poll_interval_s=t.float("poll_interval_s", 300.0, min=0.1, max=86400, exclusive_min=False),
        health_deadline_s=t.float("health_deadline_s", 120.0, min=1, max=3600),
        max_boot_attempts=t.int("max_boot_attempts", 2, min=1, max=10),
        model_health_s=t.float("model_health_s", 30.0, min=0, max=3600),
        clock_slack_s=t.float("clock_slack_s", 3600.0, min=0, max=30 * 86400),
        stop_grace_s=t.float("stop_grace_s", 20.0, min=0.5, max=600),
    )
    t.reject_unknown()
    return cfg


def _resolve(value: str, base_dir: Path) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base_dir / p
