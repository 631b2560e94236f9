"""UpdateVerifier: the good path, clock slack, trust bootstrap, reason mapping, public API.

A real repository (python-tuf metadata, Ed25519 keys) served over loopback HTTP; the box side is
the real ngclient Updater. Attack scenarios live in test_update_verify_attacks.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_exc

import agent.updater
from agent.updater.verify import (
    ReasonCode,
    UpdateRejected,
    UpdateVerifier,
    VerifiedTarget,
    _Observed,
    _pin_reference_time,
    classify,
)
from core.errors import ConfigError, QuanedgeError
from firmware_manifests.repository import Repository
from firmware_manifests.schema import TargetKind, Version
from firmware_manifests.serve import RepoServer

HW = "signctl-v2"
NOW = datetime.now(timezone.utc)


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


@pytest.fixture
def server(repo: Repository) -> Iterator[RepoServer]:
    with RepoServer(repo.path) as srv:
        yield srv


def publish(repo: Repository, tmp_path: Path, name: str, version: str, **kw) -> bytes:
    data = f"{name} {version}\n".encode() * 100
    src = tmp_path / "src" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    kw.setdefault("kind", "device_firmware")
    kw.setdefault("hardware", [HW])
    repo.add_target(src, version=version, **kw)
    repo.sign()
    return data


def make_box(tmp_path: Path, repo: Repository, server: RepoServer, **kw) -> UpdateVerifier:
    meta = tmp_path / "box" / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "root.json").write_bytes(repo.trusted_root(1))
    installed = kw.pop("installed", {"device_firmware": "2.0.0"})
    kw.setdefault("clock_slack_s", 0)
    return UpdateVerifier(meta, server.url, tmp_path / "box" / "cache", kw.pop("hardware", HW),
                          lambda kind: installed.get(kind.value), **kw)


def test_public_api_is_pinned() -> None:
    assert agent.updater.__all__ == ["ReasonCode", "UpdateRejected", "UpdateVerifier", "VerifiedTarget"]
    assert issubclass(UpdateRejected, QuanedgeError)
    assert {c.value for c in ReasonCode} == {
        "tampered", "bad_signature", "rollback", "freeze", "mix_and_match", "wrong_hardware",
        "downgrade", "too_old_to_upgrade", "endless_data", "unknown_target",
        "repository_unreachable",
    }


def test_verify_and_fetch_returns_a_verified_file(repo, server, tmp_path) -> None:
    data = publish(repo, tmp_path, "sc-2.1.0.bin", "2.1.0", min_from="2.0.0")
    box = make_box(tmp_path, repo, server)
    got = box.verify_and_fetch("sc-2.1.0.bin")
    assert got == VerifiedTarget(
        "sc-2.1.0.bin", tmp_path / "box" / "cache" / "sc-2.1.0.bin", TargetKind.DEVICE_FIRMWARE,
        Version.parse("2.1.0"), hashlib.sha256(data).hexdigest(), len(data),
    )
    assert got.path.read_bytes() == data
    assert sorted(p.name for p in got.path.parent.iterdir()) == ["sc-2.1.0.bin"]  # no leftovers
    # the box now trusts the published versions
    assert (tmp_path / "box" / "metadata" / "timestamp.json").exists()


def test_a_cached_verified_file_is_not_downloaded_again(repo, server, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box = make_box(tmp_path, repo, server)
    first = box.verify_and_fetch("fw.bin")
    mtime = first.path.stat().st_mtime_ns
    sha = repo.targets().signed.targets["fw.bin"].hashes["sha256"]
    (repo.targets_dir / f"{sha}.fw.bin").unlink()  # a download would now fail
    assert box.verify_and_fetch("fw.bin").path.stat().st_mtime_ns == mtime


def test_async_wrapper_runs_in_a_thread(repo, server, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box = make_box(tmp_path, repo, server)
    assert asyncio.run(box.averify_and_fetch("fw.bin")).version == Version.parse("2.1.0")


def test_bootstrap_root_from_the_image_chains_through_rotations(repo, server, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    repo.rotate_key("root")
    repo.rotate_key("targets")
    box = UpdateVerifier(tmp_path / "m", server.url, tmp_path / "c", HW, lambda k: "2.0",
                         bootstrap_root=repo.trusted_root(1))
    assert box.verify_and_fetch("fw.bin").name == "fw.bin"
    assert sorted(p.name for p in (tmp_path / "m" / "root_history").iterdir()) == [
        "1.root.json", "2.root.json", "3.root.json"
    ]


# ---- clock slack ---------------------------------------------------------------------------
def _box_clock_ahead(by: timedelta):
    return lambda: datetime.now(timezone.utc) + by


def test_box_clock_slightly_ahead_is_tolerated_within_slack(repo, server, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    # timestamp expires in 1 day; this RTC-less box thinks it is 10 minutes past that
    box = make_box(tmp_path, repo, server, clock_slack_s=3600,
                   clock=_box_clock_ahead(timedelta(days=1, minutes=10)))
    assert box.verify_and_fetch("fw.bin").name == "fw.bin"


def test_expiry_beyond_the_slack_is_still_a_freeze(repo, server, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box = make_box(tmp_path, repo, server, clock_slack_s=300,
                   clock=_box_clock_ahead(timedelta(days=1, minutes=10)))
    with pytest.raises(UpdateRejected) as info:
        box.verify_and_fetch("fw.bin")
    assert info.value.reason_code is ReasonCode.FREEZE
    assert "timestamp.json is expired" in info.value.message
    assert list((tmp_path / "box" / "cache").iterdir()) == []


def test_reference_time_seam_is_still_there(repo, server, tmp_path) -> None:
    """python-tuf keeps the fixed update time where _pin_reference_time sets it."""
    class NoSeam:
        pass

    with pytest.raises(RuntimeError, match="clock slack cannot be applied"):
        _pin_reference_time(NoSeam(), NOW)  # type: ignore[arg-type]
    box = make_box(tmp_path, repo, server, clock_slack_s=90, clock=lambda: NOW)
    updater = box._new_updater(box._fetcher_factory())
    assert updater._trusted_set.reference_time == NOW - timedelta(seconds=90)


# ---- bootstrap and argument errors --------------------------------------------------------
def test_missing_trust_anchor_is_a_config_error_naming_the_file(server, tmp_path) -> None:
    box = UpdateVerifier(tmp_path / "m", server.url, tmp_path / "c", HW, lambda k: None)
    with pytest.raises(ConfigError, match=r"m/root\.json: the box has no trusted root"):
        box.verify_and_fetch("fw.bin")


def test_corrupt_trust_anchor_is_a_config_error(server, tmp_path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "root.json").write_text("{not json")
    box = UpdateVerifier(tmp_path / "m", server.url, tmp_path / "c", HW, lambda k: None)
    with pytest.raises(ConfigError, match="not valid TUF root metadata"):
        box.verify_and_fetch("fw.bin")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hardware": " "}, "hardware must be"),
        ({"clock_slack_s": -1}, "clock_slack_s must be >= 0"),
        ({"clock_slack_s": float("nan")}, "clock_slack_s must be >= 0"),
        ({"repo_url": "ftp://x/"}, "repo_url must be an http"),
    ],
)
def test_bad_arguments_fail_in_init(tmp_path, kwargs, message) -> None:
    args = {"repo_url": "http://127.0.0.1:1/", "hardware": HW} | kwargs
    with pytest.raises(ValueError, match=message):
        UpdateVerifier(tmp_path / "m", args.pop("repo_url"), tmp_path / "c", args.pop("hardware"),
                       lambda k: None, **args)


def test_garbage_installed_version_is_a_config_error(repo, server, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box = make_box(tmp_path, repo, server, installed={"device_firmware": "banana"})
    with pytest.raises(ConfigError, match=r"installed_version\.device_firmware.*'banana'"):
        box.verify_and_fetch("fw.bin")


def test_unreachable_repository(repo, tmp_path) -> None:
    with RepoServer(repo.path) as srv:
        box = make_box(tmp_path, repo, srv)
    with pytest.raises(UpdateRejected) as info:  # server is gone now
        box.verify_and_fetch("fw.bin")
    assert info.value.reason_code is ReasonCode.REPOSITORY_UNREACHABLE
    assert info.value.to_record() == {
        "reason": "repository_unreachable", "target": "fw.bin", "message": info.value.message
    }


# ---- the mapping itself -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "phase", "expected"),
    [
        (tuf_exc.DownloadLengthMismatchError("x"), "target", ReasonCode.ENDLESS_DATA),
        (tuf_exc.SlowRetrievalError("x"), "metadata", ReasonCode.REPOSITORY_UNREACHABLE),
        (tuf_exc.DownloadHTTPError("x", 404), "target", ReasonCode.REPOSITORY_UNREACHABLE),
        (tuf_exc.ExpiredMetadataError("x"), "metadata", ReasonCode.FREEZE),
        (tuf_exc.UnsignedMetadataError("x"), "metadata", ReasonCode.BAD_SIGNATURE),
        (tuf_exc.LengthOrHashMismatchError("x"), "target", ReasonCode.TAMPERED),
        (tuf_exc.RepositoryError("x"), "metadata", ReasonCode.TAMPERED),
    ],
)
def test_classify_by_exception_type(exc, phase, expected) -> None:
    assert classify(exc, phase=phase, observed=None, trusted={}) is expected


def test_classify_garbage_metadata_as_tampered() -> None:
    observed = _Observed("snapshot", 3, b"\x00garbage")
    exc = tuf_exc.LengthOrHashMismatchError("x")
    assert classify(exc, phase="metadata", observed=observed, trusted={}) is ReasonCode.TAMPERED
