"""Test support for kill -9 tests: stop a real process at a named update point, and log every
append the pipeline acknowledges. Production code only has the seams (agent.updater.checkpoints,
Supervisor(agent_main=, checkpoints=), UpdaterService(checkpoints=), Pipeline.on_commit); this
module fills them, driven by environment variables the test sets on the process tree:

    QUANEDGE_UPDATER_PAUSE_AT=<point>     e.g. downloading, installing, switched, health_check
    QUANEDGE_UPDATER_PAUSE_FILE=<path>    created (O_EXCL) with "<pid> <point>" when the pause begins
    QUANEDGE_TEST_ACK_LOG=<path>               one "first last" line per acknowledged (durable) append

The first process to reach `<point>` creates the file and then waits forever (the test kills it);
once the file exists the point is passed through, so the restarted process runs on. Nothing is
skipped or simulated: the process only waits.

As a script it starts the box the way production does, with these hooks filled in:

    python tests/pause_points.py launcher --config box.toml [--root DIR]   (the supervisor)
    python tests/pause_points.py agent run --config box.toml               (`quanedge agent run`)

The supervisor started this way starts its agents through this script too (`agent_main`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.updater.checkpoints import Checkpoints

TESTS_DIR = Path(__file__).resolve().parent
SCRIPT = str(Path(__file__).resolve())


def with_tests_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` for a `python -c` child that imports this module."""
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)}


class EnvPause(Checkpoints):
    """Stops at QUANEDGE_UPDATER_PAUSE_AT (once per QUANEDGE_UPDATER_PAUSE_FILE)."""

    def _claim(self, point: str) -> bool:
        if os.environ.get("QUANEDGE_UPDATER_PAUSE_AT") != point:
            return False
        marker = os.environ.get("QUANEDGE_UPDATER_PAUSE_FILE")
        if not marker:
            return False
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, f"{os.getpid()} {point}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def reached(self, point: str) -> None:
        if self._claim(point):
            while True:
                time.sleep(3600)

    async def areached(self, point: str) -> None:
        if self._claim(point):
            await asyncio.Event().wait()


def ack_logger(path: str | os.PathLike[str]) -> Callable[[int, int], None]:
    """A Pipeline.on_commit that appends "first last" to `path` after each durable append."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def log(first: int, last: int) -> None:
        os.write(fd, f"{first} {last}\n".encode())
    return log


def _launcher(argv: list[str]) -> int:
    import argparse

    from agent.updater.launcher import Supervisor, read_settings
    from core.errors import QuanedgeError
    from core.logs import setup_logging

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", "-c", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args(argv)
    setup_logging(False)
    try:
        return Supervisor(read_settings(args.config), args.root, agent_main=(SCRIPT,), checkpoints=EnvPause()).run()
    except QuanedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _agent_run(argv: list[str]) -> int:
    import argparse

    import agent.updater.service as service
    from agent.config import load_config
    from agent.runtime import run_agent
    from core.errors import QuanedgeError
    from core.logs import setup_logging

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", "-c", type=Path, required=True)
    args = parser.parse_args(argv)

    class PausingUpdater(service.UpdaterService):
        def __init__(self, *a: Any, **kw: Any) -> None:
            kw.setdefault("checkpoints", EnvPause())
            super().__init__(*a, **kw)

    # run_agent builds its UpdaterService itself (agent.runtime takes no checkpoints yet): it
    # imports the class from agent.updater.service when it starts it, so it gets this subclass.
    service.UpdaterService = PausingUpdater  # type: ignore[misc]
    ack_log = os.environ.get("QUANEDGE_TEST_ACK_LOG")

    def started(parts: dict[str, Any]) -> None:
        if ack_log:
            parts["pipeline"].on_commit = ack_logger(ack_log)

    setup_logging(False)
    try:
        asyncio.run(run_agent(load_config(args.config), on_started=started))
    except QuanedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["launcher"]:
        return _launcher(argv[1:])
    if argv[:2] == ["agent", "run"]:
        return _agent_run(argv[2:])
    print(f"usage: {sys.argv[0]} launcher --config FILE | agent run --config FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
