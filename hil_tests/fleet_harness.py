"""A real fleet server in its own process, plus a signed update repository, for load tests.

    repo = make_update_repo(tmp / "updates", versions=("0.2.0", "0.3.0"))
    with ServerProcess(tmp, repo_dir=repo, checkin_interval_s=5) as server:
        creds = provision_sqlite(server.db_path, SimConfig(boxes=10_000))
        ...  # FleetSim(server.url, ...), admin calls with server.admin_headers
The server runs `python -m fleet_server.server` (uvicorn, one process), so it has a core of its
own while the simulator or load generator runs in the caller's process. Its log goes to
`<workdir>/server.log`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import httpx

__all__ = ["ADMIN_TOKEN", "ServerProcess", "agent_target", "free_port", "make_update_repo"]

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


def agent_target(version: str) -> str:
    return f"agent-{version}.tar"


def make_update_repo(root: Path, versions: tuple[str, ...] = ("0.2.0",),
                     hardware: tuple[str, ...] = ("qe-box-a",)) -> Path:
    """A signed repository with an agent bundle per version (placeholder bytes)."""
    from firmware_manifests.repository import Repository

    repo = Repository.init(root)
    for version in versions:
        src = root.parent / f"{root.name}-agent-{version}.tar"
        src.write_bytes(f"agent bundle {version}\n".encode() * 100)
        repo.add_target(src, kind="agent_bundle", version=version, hardware=list(hardware),
                        name=agent_target(version))
    repo.sign()
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, workdir: Path, *, repo_dir: Path | None = None, checkin_interval_s: int = 10,
                 db_path: Path | str | None = None) -> None:
        """`db_path`: a SQLite file (default <workdir>/fleet.db) or a PostgreSQL URL."""
        self.workdir = workdir
        self.db_path = db_path or workdir / "fleet.db"
        self.repo_dir = repo_dir
        self.checkin_interval_s = checkin_interval_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "fleet_server.server", "--db", str(self.db_path), "--port", str(self.port),
               "--admin-token", ADMIN_TOKEN, "--checkin-interval", str(self.checkin_interval_s)]
        if self.repo_dir is not None:
            cmd += ["--tuf-repo", str(self.repo_dir)]
        self._log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fleet server exited with {self._proc.returncode}; see {self.workdir}/server.log")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fleet server did not answer within {timeout_s} s")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
