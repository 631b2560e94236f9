"""Resumable, verified downloads against a real TUF repository over loopback HTTP with Range:
network cut mid-download, kill -9 mid-download, a server without Range, endless data, a
corrupted part on disk, tampered bytes on the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pause_points import with_tests_on_path
from updater_support import HW, TufRepo, wait_until

from agent.updater.download import fetch_target
from agent.updater.journal import Action, Journal, State
from agent.updater.verify import ReasonCode, UpdateRejected

SIZE = 300_000


@pytest.fixture
def repo(tmp_path: Path):
    r = TufRepo(tmp_path / "repo")
    yield r
    r.close()


@pytest.fixture
def payload(tmp_path: Path, repo: TufRepo) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "agent-0.2.0.tar.gz").write_bytes(data)
    repo.publish(tmp_path / "agent-0.2.0.tar.gz", kind="agent_bundle", version="0.2.0")
    return data


def job_for(journal: Journal, repo: TufRepo):
    job = journal.begin(Action.from_json({
        "action_id": "r-01.box", "rollout_id": "r-01", "kind": "agent", "target_name": "agent-0.2.0.tar.gz",
        "version": "0.2.0", "repo_url": repo.url, "deadline_s": 600}))
    return journal.advance(job, State.DOWNLOADING)


def fetch(tmp_path: Path, repo: TufRepo, journal: Journal, **kw):
    job = journal.current()
    return fetch_target(job, journal, root=tmp_path / "root", hardware=HW, installed_version=lambda kind: "0.1.0",
                        clock_slack_s=0, bootstrap_root=repo.repo.trusted_root(1), fsync_every=32 * 1024, **kw)


def parts(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "root" / "cache" / "parts").glob("*.part"))


def test_a_download_is_verified_and_leaves_no_part(tmp_path: Path, repo: TufRepo, payload: bytes) -> None:
    journal = Journal(tmp_path / "j.db")
    job_for(journal, repo)
    target = fetch(tmp_path, repo, journal)
    assert target.path.read_bytes() == payload and target.length == SIZE
    assert parts(tmp_path) == []
    assert [r[1:] for r in repo.target_requests()] == [(None, 200)]


def test_a_network_cut_mid_download_resumes_from_the_journaled_offset(tmp_path: Path, repo: TufRepo,
                                                                      payload: bytes) -> None:
    repo.faults.cut_after, repo.faults.cuts_left = 100_000, 1
    journal = Journal(tmp_path / "j.db")
    job_for(journal, repo)
    with pytest.raises(UpdateRejected) as err:
        fetch(tmp_path, repo, journal)
    assert err.value.reason_code is ReasonCode.REPOSITORY_UNREACHABLE
    job = journal.current()
    assert 32 * 1024 <= job.offset <= 100_000
    [part] = parts(tmp_path)
    assert part.read_bytes() == payload[: part.stat().st_size] and part.stat().st_size >= job.offset
    target = fetch(tmp_path, repo, journal)
    assert target.path.read_bytes() == payload
    assert [r[1:] for r in repo.target_requests()] == [(None, 200), (f"bytes={job.offset}-", 206)]
    assert parts(tmp_path) == []


def test_a_server_that_ignores_ranges_still_completes_the_file(tmp_path: Path, repo: TufRepo, payload: bytes) -> None:
    repo.faults.cut_after, repo.faults.cuts_left = 100_000, 1
    journal = Journal(tmp_path / "j.db")
    job_for(journal, repo)
    with pytest.raises(UpdateRejected):
        fetch(tmp_path, repo, journal)
    repo.faults.ignore_range = True
    assert fetch(tmp_path, repo, journal).path.read_bytes() == payload
    assert repo.target_requests()[-1][2] == 200


def test_endless_data_is_cut_at_the_signed_length(tmp_path: Path, repo: TufRepo, payload: bytes) -> None:
    repo.faults.extra = b"\0" * 200_000
    journal = Journal(tmp_path / "j.db")
    job_for(journal, repo)
    with pytest.raises(UpdateRejected) as err:
        fetch(tmp_path, repo, journal)
    assert err.value.reason_code is ReasonCode.ENDLESS_DATA
    assert parts(tmp_path) == [] and journal.current().offset == 0
    assert not (tmp_path / "root" / "cache" / "agent-0.2.0.tar.gz").exists()


def test_a_corrupted_part_is_downloaded_again_from_byte_zero(tmp_path: Path, repo: TufRepo, payload: bytes) -> None:
    repo.faults.cut_after, repo.faults.cuts_left = 100_000, 1
    journal = Journal(tmp_path / "j.db")
    job_for(journal, repo)
    with pytest.raises(UpdateRejected):
        fetch(tmp_path, repo, journal)
    [part] = parts(tmp_path)
    with part.open("r+b") as fh:  # a flipped byte in the durable prefix (bad flash, say)
        fh.write(b"\xff\xfe")
    offset = journal.current().offset
    assert fetch(tmp_path, repo, journal).path.read_bytes() == payload
    assert [r[1:] for r in repo.target_requests()] == [(None, 200), (f"bytes={offset}-", 206), (None, 200)]


def test_bytes_changed_on_the_server_are_rejected_as_tampered(tmp_path: Path, repo: TufRepo, payload: bytes) -> None:
    [served] = list((tmp_path / "repo" / "targets").glob("*.agent-0.2.0.tar.gz"))
    served.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    journal = Journal(tmp_path / "j.db")
    job_for(journal, repo)
    with pytest.raises(UpdateRejected) as err:
        fetch(tmp_path, repo, journal)
    assert err.value.reason_code is ReasonCode.TAMPERED
    assert parts(tmp_path) == []


CHILD = """
import sys
from pathlib import Path
from agent.updater.download import fetch_target
from agent.updater.journal import Journal
from pause_points import EnvPause
root, repo_url, trusted, hw = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_bytes(), sys.argv[4]
j = Journal(root / "j.db")
fetch_target(j.current(), j, root=root / "root", hardware=hw, installed_version=lambda k: "0.1.0", clock_slack_s=0,
             bootstrap_root=trusted, fsync_every=32 * 1024, pause=EnvPause().reached)
"""


def test_kill_9_mid_download_resumes_at_the_durable_offset(tmp_path: Path, repo: TufRepo, payload: bytes) -> None:
    journal = Journal(tmp_path / "j.db")
    job_for(journal, repo)
    marker = tmp_path / "paused"
    env = with_tests_on_path({**os.environ, "QUANEDGE_UPDATER_PAUSE_AT": "downloading",
                              "QUANEDGE_UPDATER_PAUSE_FILE": str(marker)})
    trusted = repo.trusted_root(tmp_path / "root.json")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), repo.url, str(trusted), HW], env=env)
    try:
        wait_until(marker.exists, 60, "the download to pause after its first fsync")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
    offset = journal.current().offset
    assert 0 < offset < SIZE
    assert fetch(tmp_path, repo, journal).path.read_bytes() == payload
    assert repo.target_requests()[-1][1:] == (f"bytes={offset}-", 206)
