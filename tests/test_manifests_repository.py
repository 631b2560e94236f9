"""Repository tooling: layout, keys, publishing, online refresh, key rotation, serving."""

from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata

from firmware_manifests.keys import ROLES
from firmware_manifests.layout import ExpiryPolicy, exclusive_write
from firmware_manifests.repository import Repository
from firmware_manifests.schema import ManifestError, TargetMeta
from firmware_manifests.serve import RepoServer

HW = "signctl-v2"


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "repo")


def _file(tmp_path: Path, name: str, data: bytes = b"firmware image\n" * 64) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _verify(repo: Repository, role: str, md: Metadata) -> None:
    repo.root().signed.verify_delegate(role, md.signed_bytes, md.signatures)


def test_init_writes_version_one_of_every_role_signed_by_its_key(repo: Repository) -> None:
    names = sorted(p.name for p in repo.metadata_dir.iterdir())
    assert names == [
        "1.root.json", "1.snapshot.json", "1.targets.json", "root.json", "timestamp.json"
    ]
    root = repo.root()
    assert root.signed.version == 1 and root.signed.consistent_snapshot is True
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
    for role, md in (("targets", repo.targets()), ("snapshot", repo.snapshot()),
                     ("timestamp", repo.timestamp())):
        assert md.signed.version == 1
        _verify(repo, role, md)
    # each role has its own key
    assert len({tuple(r.keyids) for r in root.signed.roles.values()}) == 4


def test_private_keys_are_0600_in_a_0700_dir(repo: Repository) -> None:
    assert stat.S_IMODE(repo.keys.directory.stat().st_mode) == 0o700
    for role in ROLES:
        assert stat.S_IMODE(repo.keys.path(role).stat().st_mode) == 0o600
        assert b"BEGIN PRIVATE KEY" in repo.keys.path(role).read_bytes()


def test_published_files_are_world_readable(repo: Repository, tmp_path: Path) -> None:
    repo.add_target(_file(tmp_path, "fw.bin"), kind="device_firmware", version="1", hardware=[HW])
    repo.sign()
    published = [*repo.metadata_dir.iterdir(), *repo.targets_dir.iterdir()]
    assert published and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in published)


def test_timestamp_expiry_is_short_and_configurable(tmp_path: Path) -> None:
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    repo = Repository.init(
        tmp_path / "r", expiry=ExpiryPolicy(timestamp=timedelta(hours=6)), clock=lambda: now
    )
    assert repo.timestamp().signed.expires == now + timedelta(hours=6)
    assert repo.snapshot().signed.expires == now + timedelta(days=7)
    assert repo.root().signed.expires == now + timedelta(days=365)
    # the policy persists for later commands (the fleet server's refresh job)
    assert Repository(tmp_path / "r").expiry.timestamp == timedelta(hours=6)


def test_encrypted_keys_need_the_passphrase(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", passphrase="correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in repo.keys.path("targets").read_bytes()
    with pytest.raises(ManifestError, match=r"targets\.key: key is encrypted"):
        Repository(tmp_path / "r").sign()
    with pytest.raises(ManifestError, match="wrong passphrase"):
        Repository(tmp_path / "r", passphrase="wrong").sign()
    assert Repository(tmp_path / "r", passphrase="correct horse").sign().targets == 2


def test_key_readable_by_others_is_refused(repo: Repository) -> None:
    repo.keys.path("timestamp").chmod(0o644)
    with pytest.raises(ManifestError, match=r"timestamp\.key: .*mode 0644.*chmod 600"):
        repo.refresh_timestamp()


def test_add_stages_and_sign_publishes_with_custom_fields(repo: Repository, tmp_path: Path) -> None:
    src = _file(tmp_path, "sc-2.1.0.bin")
    info = repo.add_target(src, kind="device_firmware", version="2.1.0", hardware=[HW],
                           min_from="2.0.0")
    assert repo.targets().signed.targets == {}  # staged, not yet published
    assert [t.staged for t in repo.status().targets] == [True]
    published = repo.sign()
    assert (published.targets, published.snapshot, published.timestamp) == (2, 2, 2)
    assert not repo.staging_file.exists()
    target = repo.targets().signed.targets["sc-2.1.0.bin"]
    assert target == info
    meta = TargetMeta.from_custom(target.custom)
    assert (str(meta.version), meta.hardware, str(meta.min_from_version)) == ("2.1.0", (HW,), "2.0.0")
    sha = target.hashes["sha256"]
    assert (repo.targets_dir / f"{sha}.sc-2.1.0.bin").read_bytes() == src.read_bytes()
    # parents pin children by version, length and hash
    t_bytes = (repo.metadata_dir / "2.targets.json").read_bytes()
    snap_meta = repo.snapshot().signed.meta["targets.json"]
    assert snap_meta.version == 2 and snap_meta.length == len(t_bytes)
    snap_meta.verify_length_and_hashes(t_bytes)
    repo.timestamp().signed.snapshot_meta.verify_length_and_hashes(
        (repo.metadata_dir / "2.snapshot.json").read_bytes()
    )


def test_nested_target_names_are_content_addressed_in_their_folder(repo, tmp_path) -> None:
    repo.add_target(_file(tmp_path, "m.onnx", b"onnx"), kind="onnx_model", version="1.0",
                    hardware=[HW], name="models/anomaly.onnx")
    repo.sign()
    sha = repo.targets().signed.targets["models/anomaly.onnx"].hashes["sha256"]
    assert (repo.targets_dir / "models" / f"{sha}.anomaly.onnx").read_bytes() == b"onnx"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "toaster"}, "unknown kind"),
        ({"version": "two"}, "not a version"),
        ({"hardware": []}, "hardware list is empty"),
        ({"min_from": "3.0"}, "must be lower than version"),
        ({"name": "../escape.bin"}, "bad target name"),
    ],
)
def test_add_refuses_bad_input_naming_the_file(repo, tmp_path, kwargs, message) -> None:
    args = {"kind": "device_firmware", "version": "2.1.0", "hardware": [HW]} | kwargs
    with pytest.raises(ManifestError, match=message):
        repo.add_target(_file(tmp_path, "fw.bin"), **args)
    assert not repo.staging_file.exists()


def test_add_missing_file_names_it(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.bin: no such file"):
        repo.add_target(tmp_path / "nope.bin", kind="device_firmware", version="1", hardware=[HW])


def test_a_target_name_only_moves_to_higher_versions(repo: Repository, tmp_path: Path) -> None:
    repo.add_target(_file(tmp_path, "fw.bin", b"v2"), kind="device_firmware", version="2.0",
                    hardware=[HW])
    repo.sign()
    with pytest.raises(ManifestError, match="already at version 2.0"):
        repo.add_target(_file(tmp_path, "fw.bin", b"v1"), kind="device_firmware",
                        version="1.9", hardware=[HW])
    repo.add_target(_file(tmp_path, "fw.bin", b"v3"), kind="device_firmware", version="2.0.1",
                    hardware=[HW])
    assert repo.sign().targets == 3


def test_published_versions_are_never_rewritten(repo: Repository) -> None:
    path = repo.metadata_dir / "1.targets.json"
    before = path.read_bytes()
    with pytest.raises(ManifestError, match=r"1\.targets\.json: refusing to overwrite"):
        exclusive_write(path, b"{}")
    assert path.read_bytes() == before


def test_leftovers_of_an_interrupted_publication_are_skipped(repo: Repository) -> None:
    # a crash after 2.targets.json was written but before snapshot/timestamp pointed at it
    (repo.metadata_dir / "2.targets.json").write_bytes(b"half-published")
    published = repo.sign()
    assert (published.targets, published.snapshot, published.timestamp) == (3, 2, 2)
    assert (repo.metadata_dir / "2.targets.json").read_bytes() == b"half-published"
    _verify(repo, "targets", repo.targets())


def test_sign_checks_the_key_belongs_to_the_role(repo: Repository, tmp_path: Path) -> None:
    other = Repository.init(tmp_path / "other")
    repo.keys.path("targets").unlink()
    repo.keys.path("targets").write_bytes(other.keys.path("targets").read_bytes())
    repo.keys.path("targets").chmod(0o600)
    with pytest.raises(ManifestError, match=r"targets\.key: keyid \w+ is not a targets key of root v1"):
        repo.sign()
    assert repo.targets().signed.version == 1


def test_refresh_timestamp_needs_only_the_online_keys(repo: Repository, tmp_path: Path) -> None:
    online = tmp_path / "fleet-server-keys"
    online.mkdir(mode=0o700)
    for role in ("snapshot", "timestamp"):
        repo.keys.path(role).rename(online / f"{role}.key")
    server_side = Repository(repo.path, keys_dir=online)
    published = server_side.refresh_timestamp()
    assert (published.targets, published.snapshot, published.timestamp) == (1, 1, 2)
    _verify(repo, "timestamp", repo.timestamp())
    with pytest.raises(ManifestError, match=r"targets\.key: no targets key here.*offline media"):
        server_side.sign()


def test_refresh_renews_snapshot_when_past_half_life(repo: Repository) -> None:
    later = datetime.now(timezone.utc) + timedelta(days=4)
    published = Repository(repo.path, clock=lambda: later).refresh_timestamp()
    assert (published.snapshot, published.timestamp) == (2, 2)
    assert repo.snapshot().signed.expires == (later + timedelta(days=7)).replace(microsecond=0)


@pytest.mark.parametrize("role", ROLES)
def test_rotate_key_publishes_root_signed_by_old_and_new_root(repo: Repository, role: str) -> None:
    old_root = repo.root().signed
    old_keyid = old_root.roles[role].keyids[0]
    rotation = repo.rotate_key(role)
    new = repo.root()
    assert rotation.root_version == new.signed.version == 2
    assert new.signed.roles[role].keyids == [rotation.new_keyid] != [old_keyid]
    # clients chain through: v2 verifies under v1 and under itself
    old_root.verify_delegate("root", new.signed_bytes, new.signatures)
    new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    assert json.loads((repo.metadata_dir / "root.json").read_bytes())["signed"]["version"] == 2
    # the rotated role's current metadata verifies under the new root AND the old one, so a box
    # that has not fetched root v2 yet sees no gap
    if role != "root":
        md = getattr(repo, role)()
        _verify(repo, role, md)
        old_root.verify_delegate(role, md.signed_bytes, md.signatures)
    # the old key is retired, the store holds the new one
    retired = list((repo.keys.directory / "retired").iterdir())
    assert [p.name for p in retired] == [f"{role}-{old_keyid[:16]}.key"]
    assert repo.keys.load(role).public_key.keyid == rotation.new_keyid
    # ... and the retired key can no longer sign for the role
    md = Metadata.from_bytes((repo.metadata_dir / "1.targets.json").read_bytes())
    md.signatures.clear()
    md.sign(repo.keys.load_file(retired[0]))
    with pytest.raises(UnsignedMetadataError):
        new.signed.verify_delegate(role, md.signed_bytes, md.signatures)


def test_rotations_chain_and_sign_keeps_working(repo: Repository, tmp_path: Path) -> None:
    for role in ("timestamp", "snapshot", "targets", "root", "root"):
        repo.rotate_key(role)
    assert repo.root_versions() == [1, 2, 3, 4, 5, 6]
    repo.add_target(_file(tmp_path, "fw.bin"), kind="device_firmware", version="1", hardware=[HW])
    repo.sign()
    for role in ("targets", "snapshot", "timestamp"):
        _verify(repo, role, getattr(repo, role)())


def test_rotating_a_lost_key(repo: Repository) -> None:
    repo.keys.path("targets").unlink()  # the admin's USB stick is gone
    rotation = repo.rotate_key("targets")
    _verify(repo, "targets", repo.targets())
    assert repo.targets().signed.version == 2
    assert repo.keys.load("targets").public_key.keyid == rotation.new_keyid
    assert not (repo.keys.directory / "retired").exists()


def test_init_refuses_a_key_directory_that_holds_keys(repo: Repository, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"root\.key: key directory already holds keys"):
        Repository.init(tmp_path / "second", keys_dir=repo.keys.directory)
    assert not (tmp_path / "second").exists()


def test_interrupted_rotation_is_reported(repo: Repository) -> None:
    repo.keys.generate("targets", pending=True)
    with pytest.raises(ManifestError, match=r"targets\.key\.new: an earlier rotation did not finish"):
        repo.rotate_key("targets")


def test_status_lists_roles_and_targets(repo: Repository, tmp_path: Path) -> None:
    repo.add_target(_file(tmp_path, "a.bin"), kind="config_bundle", version="1.0", hardware=[HW])
    repo.sign()
    repo.add_target(_file(tmp_path, "b.bin"), kind="agent_bundle", version="0.2", hardware=[HW])
    status = repo.status()
    assert [(r.role, r.version, r.threshold) for r in status.roles] == [
        ("root", 1, 1), ("targets", 2, 1), ("snapshot", 2, 1), ("timestamp", 2, 1)
    ]
    assert [(t.name, t.staged, t.meta.kind.value) for t in status.targets] == [
        ("a.bin", False, "config_bundle"), ("b.bin", True, "agent_bundle")
    ]


def test_opening_a_non_repository_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"repo\.json: not a Quanedge update repository"):
        Repository(tmp_path)
    Repository.init(tmp_path / "r")
    with pytest.raises(ManifestError, match="already a repository"):
        Repository.init(tmp_path / "r")


def test_server_serves_metadata_and_targets_but_never_keys(repo: Repository) -> None:
    with RepoServer(repo.path) as server:
        with urllib.request.urlopen(server.url + "metadata/1.root.json") as resp:
            assert resp.read() == repo.trusted_root(1)
        for path in ("keys/root.key", "metadata/../keys/root.key", "metadata/%2e%2e/keys/root.key",
                     "repo.json", "staging/targets.json", "metadata/", "targets/"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(server.url + path)
            assert info.value.code == 404, path
