"""Value objects and file helpers of a repository directory (see repository.py for the layout).

Writes are crash-safe: data goes to a temporary file in the same directory, is fsynced, then
either replaces the target atomically (``atomic_write``: timestamp.json, root.json, staging) or is
hard-linked into place only if the name is free (``exclusive_write``: every versioned file, so a
published version can never be rewritten).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Signed, TargetFile

from firmware_manifests.keys import ROLES
from firmware_manifests.schema import ManifestError, TargetMeta

__all__ = [
    "ExpiryPolicy",
    "Published",
    "RepoStatus",
    "RoleStatus",
    "Rotation",
    "TargetStatus",
    "atomic_write",
    "exclusive_write",
    "load_metadata",
]


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        for role in ROLES:
            if getattr(self, role) <= timedelta(0):
                raise ValueError(f"{role} expiry must be positive, got {getattr(self, role)}")

    def to_json(self) -> dict[str, float]:
        return {f"{role}_expiry_s": getattr(self, role).total_seconds() for role in ROLES}

    @classmethod
    def from_json(cls, data: Any, file: Path) -> ExpiryPolicy:  # parsed JSON; a wrong shape is a TypeError
        try:
            return cls(**{r: timedelta(seconds=float(data[f"{r}_expiry_s"])) for r in ROLES})
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"bad expiry policy: {exc}", file=file) from None


@dataclass(frozen=True)
class Published:
    """Versions in force after a publication."""

    targets: int
    snapshot: int
    timestamp: int


@dataclass(frozen=True)
class Rotation:
    """Outcome of ``rotate_key``: the role now trusts only ``new_keyid`` from root ``root_version``."""

    role: str
    old_keyids: tuple[str, ...]
    new_keyid: str
    root_version: int


@dataclass(frozen=True)
class RoleStatus:
    role: str
    version: int
    expires: datetime
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class TargetStatus:
    name: str
    length: int
    sha256: str
    meta: TargetMeta | None  # None: the entry has no valid Quanedge custom fields
    staged: bool = False

    @classmethod
    def of(cls, info: TargetFile, *, staged: bool) -> TargetStatus:
        try:
            meta = TargetMeta.from_custom(info.custom)
        except ValueError:
            meta = None
        return cls(info.path, info.length, info.hashes.get("sha256", ""), meta, staged)


@dataclass(frozen=True)
class RepoStatus:
    roles: tuple[RoleStatus, ...]
    targets: tuple[TargetStatus, ...]


def load_metadata(path: Path, cls: type[Signed]) -> Metadata:
    """Read and parse one metadata file (no signature check); errors name the file."""
    try:
        md = Metadata.from_bytes(path.read_bytes())
    except OSError as exc:
        raise ManifestError(f"cannot read metadata: {exc.strerror}", file=path) from None
    except RepositoryError as exc:
        raise ManifestError(f"not valid TUF metadata: {exc}", file=path) from None
    if not isinstance(md.signed, cls):
        raise ManifestError(f"expected {cls.type} metadata, got {md.signed.type}", file=path)
    return md


def _spool(directory: Path, data: bytes) -> str:
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".tmp-", delete=False) as tmp:
        os.fchmod(tmp.fileno(), 0o644)  # published files are public (mkstemp makes them 0600)
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    return tmp.name


def atomic_write(path: Path, data: bytes) -> None:
    os.replace(_spool(path.parent, data), path)


def exclusive_write(path: Path, data: bytes) -> None:
    """Create ``path`` or fail: a published version is never rewritten."""
    tmp = _spool(path.parent, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ManifestError(
            "refusing to overwrite a published version; version numbers only increase", file=path
        ) from None
    finally:
        os.unlink(tmp)
