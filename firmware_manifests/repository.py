"""A TUF repository for Quanedge updates, built on python-tuf's Metadata API.

Directory layout (``consistent_snapshot`` is on, which is what ngclient expects for it)::

    DIR/repo.json                 expiry policy (not secret, not served)
    DIR/keys/                     private keys (see keys.py); NEVER served, may live elsewhere
    DIR/staging/targets.json      unsigned targets with added-but-unpublished entries
    DIR/metadata/                 served as <url>/metadata/
        N.root.json               every root version, kept forever: boxes chain 1 -> 2 -> ... N
        root.json                 copy of the newest root, for provisioning new boxes
        N.targets.json            consistent snapshots: a published version is never rewritten
        N.snapshot.json
        timestamp.json            the one file rewritten in place (atomic replace, written last)
    DIR/targets/                  served as <url>/targets/
        <dir>/<sha256>.<name>     content-addressed, so a box mid-download never sees a mix

Snapshot lists targets.json and timestamp lists snapshot.json with version, length and sha256,
so each file is pinned by its signed parent and a box never downloads more than the length.
Version numbers only increase: every write computes ``current + 1`` and versioned files are
created exclusively, so an existing version can never be replaced.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Signed, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from firmware_manifests.keys import ROLES, KeyStore, check_role
from firmware_manifests.layout import (
    ExpiryPolicy,
    Published,
    RepoStatus,
    RoleStatus,
    Rotation,
    TargetStatus,
    atomic_write,
    exclusive_write,
    load_metadata,
)
from firmware_manifests.schema import ManifestError, TargetMeta

__all__ = ["Repository"]

_ROOT_FILE = re.compile(r"^(\d+)\.root\.json$")
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
_SERIALIZER = JSONSerializer(compact=False)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Repository:
    """Operations on one repository directory; each call reads the current state from disk."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keys_dir: str | os.PathLike[str] | None = None,
        passphrase: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self.staging_file = self.path / "staging" / "targets.json"
        self.keys = KeyStore(keys_dir or self.path / "keys", passphrase)
        self._clock = clock
        config = self.path / "repo.json"
        try:
            self.expiry = ExpiryPolicy.from_json(json.loads(config.read_text()), config)
        except FileNotFoundError:
            raise ManifestError(
                "not a Quanedge update repository (run `quanedge manifest init` first)", file=config
            ) from None
        except (OSError, ValueError) as exc:
            raise ManifestError(f"cannot read repository config: {exc}", file=config) from None

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        keys_dir: str | os.PathLike[str] | None = None,
        passphrase: str | None = None,
        expiry: ExpiryPolicy | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> Repository:
        """Generate the four role keys and publish version 1 of every role."""
        path = Path(path)
        if (path / "repo.json").exists() or (path / "metadata").exists():
            raise ManifestError("already a repository; refusing to re-initialise", file=path)
        keys = KeyStore(keys_dir or path / "keys")
        for role in ROLES:
            if keys.exists(role) or keys.path(role, pending=True).exists():
                raise ManifestError("key directory already holds keys; use an empty one",
                                    file=keys.path(role))
        for sub in ("metadata", "targets", "staging"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        (path / "repo.json").write_text(json.dumps((expiry or ExpiryPolicy()).to_json(), indent=1))
        repo = cls(path, keys_dir=keys_dir, passphrase=passphrase, clock=clock)
        signers = {role: repo.keys.generate(role) for role in ROLES}
        root = Root(version=1, expires=repo._expires("root"), consistent_snapshot=True)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        repo._write_root(Metadata(root), [signers["root"]], previous=None)
        targets = Targets(version=1, expires=repo._expires("targets"))
        targets_meta = repo._write_signed(Metadata(targets), [signers["targets"]], [root])
        snapshot = Snapshot(version=1, expires=repo._expires("snapshot"))
        snapshot.meta["targets.json"] = targets_meta
        snapshot_meta = repo._write_signed(Metadata(snapshot), [signers["snapshot"]], [root])
        timestamp = Timestamp(1, expires=repo._expires("timestamp"), snapshot_meta=snapshot_meta)
        repo._write_signed(Metadata(timestamp), [signers["timestamp"]], [root])
        return repo

    # ---- reading -----------------------------------------------------------------------
    def root_versions(self) -> list[int]:
        versions = sorted(
            int(m[1]) for p in self.metadata_dir.glob("*.root.json") if (m := _ROOT_FILE.match(p.name))
        )
        if not versions:
            raise ManifestError("no N.root.json found", file=self.metadata_dir)
        return versions

    def trusted_root(self, version: int | None = None) -> bytes:
        """Bytes of a root version (default newest): what a box is provisioned with."""
        version = version or self.root_versions()[-1]
        return self._read(f"{version}.root.json")

    def root(self) -> Metadata[Root]:
        return self._load(f"{self.root_versions()[-1]}.root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        return self._load(f"{self.timestamp().signed.snapshot_meta.version}.snapshot.json", Snapshot)

    def targets(self) -> Metadata[Targets]:
        meta = self.snapshot().signed.meta.get("targets.json")
        if meta is None:
            raise ManifestError("snapshot does not list targets.json", file=self.metadata_dir)
        return self._load(f"{meta.version}.targets.json", Targets)

    def staged(self) -> Targets | None:
        if not self.staging_file.exists():
            return None
        return self._load(self.staging_file, Targets).signed

    def status(self) -> RepoStatus:
        root = self.root().signed
        roles = []
        for role, md in (("root", root), ("targets", self.targets().signed),
                         ("snapshot", self.snapshot().signed), ("timestamp", self.timestamp().signed)):
            r = root.roles[role]
            roles.append(RoleStatus(role, md.version, md.expires, tuple(r.keyids), r.threshold))
        published = self.targets().signed.targets
        staged = self.staged()
        entries = [TargetStatus.of(t, staged=False) for t in published.values()]
        if staged is not None:
            entries += [TargetStatus.of(t, staged=True) for n, t in staged.targets.items()
                        if published.get(n) != t]
        return RepoStatus(tuple(roles), tuple(entries))

    # ---- offline operations (targets / root keys) --------------------------------------
    def add_target(
        self,
        file: str | os.PathLike[str],
        *,
        kind: str,
        version: str,
        hardware: Iterable[str],
        min_from: str | None = None,
        name: str | None = None,
    ) -> TargetFile:
        """Stage ``file`` as a target; it is published by the next ``sign()``."""
        src = Path(file)
        if not src.is_file():
            raise ManifestError("no such file", file=src)
        try:
            meta = TargetMeta.build(kind, version, list(hardware), min_from)
        except ValueError as exc:
            raise ManifestError(str(exc), file=src) from None
        name = name or src.name
        if not _TARGET_NAME.match(name) or ".." in name.split("/"):
            raise ManifestError(f"bad target name {name!r}; use letters, digits, . _ - and /")
        staged = self.staged()
        working = staged if staged is not None else copy.deepcopy(self.targets().signed)
        existing = working.targets.get(name)
        if existing is not None:
            try:
                old = TargetMeta.from_custom(existing.custom).version
            except ValueError:
                old = None
            if old is not None and meta.version <= old:
                raise ManifestError(
                    f"target {name!r} is already at version {old}; "
                    f"a new version must be higher (got {meta.version})",
                    file=src,
                )
        info = TargetFile.from_file(name, str(src), ["sha256"])
        info.unrecognized_fields["custom"] = meta.to_custom()
        self._store_content(src, info)
        working.targets[name] = info
        self.staging_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.staging_file, Metadata(working).to_bytes(_SERIALIZER))
        return info

    def sign(self) -> Published:
        """Publish staged targets (or re-sign the current ones): targets, snapshot, timestamp +1."""
        root = self.root().signed
        signers = {r: [self._signer(r, root)] for r in ("targets", "snapshot", "timestamp")}
        staged = self.staged()
        new = staged if staged is not None else copy.deepcopy(self.targets().signed)
        published = self._publish_from("targets", root, signers, new)
        self.staging_file.unlink(missing_ok=True)
        return published

    def rotate_key(self, role: str) -> Rotation:
        """Replace ``role``'s key: root N+1 (signed by old and new root keys) delegates to it.

        The role's metadata is re-published signed by new and old key before root N+1 appears,
        so boxes on root N and boxes already on N+1 both accept it. The old key file moves to
        ``keys/retired/``.
        """
        check_role(role)
        if self.keys.path(role, pending=True).exists():
            raise ManifestError(
                "an earlier rotation did not finish; inspect and remove the pending key",
                file=self.keys.path(role, pending=True),
            )
        old_root = self.root().signed
        root_signer = self._signer("root", old_root)
        chain = ROLES[ROLES.index(role):] if role != "root" else ()
        signers = {r: [self._signer(r, old_root)] for r in chain if r != role}
        # a lost (not merely unreadable) old key is tolerated: that is one reason to rotate
        old_signer = (
            root_signer if role == "root"
            else self._signer(role, old_root) if self.keys.exists(role) else None
        )
        new_signer = self.keys.generate(role, pending=True)
        old_keyids = tuple(old_root.roles[role].keyids)
        new_root = copy.deepcopy(old_root)
        new_root.version += 1
        new_root.expires = self._expires("root")
        for keyid in old_keyids:
            new_root.revoke_key(keyid, role)
        new_root.add_key(new_signer.public_key, role)
        root_signers = [root_signer] + ([new_signer] if role == "root" else [])
        if chain:
            signers[role] = [new_signer] + ([old_signer] if old_signer else [])
            if not old_signer:  # lost key: nothing can satisfy root N, so publish root first
                self._write_root(Metadata(new_root), root_signers, previous=old_root)
            current = self._current(role)
            verify_with = [new_root] + ([old_root] if old_signer else [])
            self._publish_from(role, new_root, signers, copy.deepcopy(current), verify_with)
            if old_signer:
                self._write_root(Metadata(new_root), root_signers, previous=old_root)
        else:
            self._write_root(Metadata(new_root), root_signers, previous=old_root)
        self.keys.promote(role, list(old_keyids))
        return Rotation(role, old_keyids, new_signer.public_key.keyid, new_root.version)

    # ---- online operation (fleet server) -----------------------------------------------
    def refresh_timestamp(self) -> Published:
        """Re-sign timestamp (and snapshot when past half its life): the server's cron job."""
        root = self.root().signed
        snapshot = self.snapshot().signed
        signers = {"timestamp": [self._signer("timestamp", root)]}
        if snapshot.expires - self._clock() < self.expiry.snapshot / 2:
            signers["snapshot"] = [self._signer("snapshot", root)]
            return self._publish_from("snapshot", root, signers, copy.deepcopy(snapshot))
        return self._publish_from("timestamp", root, signers, copy.deepcopy(self.timestamp().signed))

    # ---- internals ---------------------------------------------------------------------
    def _publish_from(
        self,
        role: str,
        root: Root,
        signers: Mapping[str, Sequence[Signer]],
        signed: Targets | Snapshot | Timestamp,
        verify_with: list[Root] | None = None,
    ) -> Published:
        """Write ``signed`` as the next version of ``role``, then new versions of the roles
        above it (snapshot, timestamp) pointing at it; timestamp.json is always written last."""
        meta: MetaFile | None = None
        for r in ROLES[ROLES.index(role):]:
            current = self._current(r)
            body = signed if r == role else copy.deepcopy(current)
            # skip versions left unreferenced by an interrupted publication: never reuse a number
            body.version = max(current.version, self._highest_file_version(r)) + 1
            body.expires = self._expires(r)
            if isinstance(body, Snapshot) and meta is not None:
                body.meta["targets.json"] = meta
            elif isinstance(body, Timestamp) and meta is not None:
                body.snapshot_meta = meta
            roots = verify_with if (r == role and verify_with) else [root]
            meta = self._write_signed(Metadata(body), signers[r], roots)
        return Published(
            self._current("targets").version,
            self._current("snapshot").version,
            self._current("timestamp").version,
        )

    def _highest_file_version(self, role: str) -> int:
        if role == "timestamp":
            return 0
        pattern = re.compile(rf"^(\d+)\.{role}\.json$")
        return max((int(m[1]) for p in self.metadata_dir.iterdir() if (m := pattern.match(p.name))),
                   default=0)

    def _current(self, role: str) -> Targets | Snapshot | Timestamp:
        if role == "targets":
            return self.targets().signed
        if role == "snapshot":
            return self.snapshot().signed
        if role == "timestamp":
            return self.timestamp().signed
        raise KeyError(role)

    def _expires(self, role: str) -> datetime:
        return self._clock() + getattr(self.expiry, role)

    def _signer(self, role: str, root: Root) -> CryptoSigner:
        signer = self.keys.load(role)
        if signer.public_key.keyid not in root.roles[role].keyids:
            raise ManifestError(
                f"keyid {signer.public_key.keyid[:16]} is not a {role} key of root "
                f"v{root.version} (revoked, or a key of another repository)",
                file=self.keys.path(role),
            )
        return signer

    def _write_signed(self, md: Metadata, signers: Sequence[Signer], roots: list[Root]) -> MetaFile:
        role = md.signed.type
        for signer in signers:
            md.sign(signer, append=True)
        for root in roots:  # never publish what a box would reject
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        data = md.to_bytes(_SERIALIZER)
        if role == "timestamp":
            atomic_write(self.metadata_dir / "timestamp.json", data)
        else:
            exclusive_write(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        return MetaFile(md.signed.version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})

    def _write_root(self, md: Metadata[Root], signers: Sequence[Signer], previous: Root | None) -> None:
        for signer in signers:
            md.sign(signer, append=True)
        for root in (md.signed, previous) if previous else (md.signed,):
            root.verify_delegate("root", md.signed_bytes, md.signatures)
        data = md.to_bytes(_SERIALIZER)
        exclusive_write(self.metadata_dir / f"{md.signed.version}.root.json", data)
        atomic_write(self.metadata_dir / "root.json", data)

    def _store_content(self, src: Path, info: TargetFile) -> None:
        dest = self.targets_dir / info.get_prefixed_paths()[0]
        if dest.exists():
            return  # content-addressed: same name means same bytes
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            os.fchmod(tmp.fileno(), 0o644)
            with src.open("rb") as fh:
                shutil.copyfileobj(fh, tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, dest)

    def _read(self, name: str) -> bytes:
        path = self.metadata_dir / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ManifestError(f"cannot read metadata: {exc.strerror}", file=path) from None

    def _load(self, name: str | Path, cls: type[Signed]) -> Metadata:
        return load_metadata(Path(name) if isinstance(name, Path) else self.metadata_dir / name, cls)
