"""Over-the-air updates on the box.

``verify``: the TUF gate. Every update (agent bundle, ONNX model, device firmware, config
bundle) is fetched through ``UpdateVerifier.verify_and_fetch``, which either returns a
``VerifiedTarget`` (a file in the box's target cache whose bytes match signed, policy-checked
metadata) or raises ``UpdateRejected`` with a machine-readable ``reason_code``.

The install state machine builds on top and only ever installs a ``VerifiedTarget``:

    config     the [updater] section (parse_updater -> UpdaterConfig)
    journal    SQLite journal of the one current update + status outbox (kill -9 safe)
    download   resumable (HTTP Range) download, verified by UpdateVerifier
    bundle     agent bundles (tar.gz of the agent's packages): build, safe unpack
    slots      versions/<v>/ + atomically switched `current` / `previous` symlinks
    models     model bundles installed beside the running version, hot-swapped
    steps      the agent-process half of the state machine (JobRunner)
    service    UpdaterService: check-in loop, driver, outbox delivery, EVENT readings
    launcher   the supervisor: restart into a new version, health check, commit / roll back
    checkin    the HTTP client of the check-in contract
    checkpoints  named update points, observable through constructor arguments (no-ops by default)

Names are imported lazily, so `import agent.updater.config` (done by every config load) does not
pull in python-tuf.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReasonCode", "UpdateRejected", "UpdateVerifier", "VerifiedTarget"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from agent.updater import verify

        return getattr(verify, name)
    raise AttributeError(f"module 'agent.updater' has no attribute {name!r}")
