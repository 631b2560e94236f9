"""Ed25519 signing keys for the four TUF roles, one PEM file per role.

Layout of a key directory (mode 0700; every file 0600, created exclusively, never clobbered)::

    keys/root.key        offline: kept by the admin, needed only to rotate keys
    keys/targets.key     offline: needed to publish new targets (``sign``)
    keys/snapshot.key    online: the fleet server re-signs snapshot...
    keys/timestamp.key   online: ...and timestamp (``refresh-timestamp``) on a schedule
    keys/retired/        keys replaced by ``rotate-key``; destroy them once clients moved on

Files are PKCS#8 PEM, encrypted with the passphrase when one is given (``BestAvailableEncryption``).
A command loads only the keys it needs, so the fleet server can run ``refresh-timestamp`` with
just the two online keys present.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner

from firmware_manifests.schema import ManifestError

__all__ = ["OFFLINE_ROLES", "ONLINE_ROLES", "ROLES", "KeyStore"]

ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ManifestError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


class KeyStore:
    """Reads and writes the private key of each role in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], passphrase: str | None = None) -> None:
        self.directory = Path(directory)
        self._password = passphrase.encode() if passphrase else None

    def path(self, role: str, *, pending: bool = False) -> Path:
        check_role(role)
        return self.directory / (f"{role}.key.new" if pending else f"{role}.key")

    def exists(self, role: str) -> bool:
        return self.path(role).exists()

    def generate(self, role: str, *, pending: bool = False) -> CryptoSigner:
        """Make a new Ed25519 key for ``role`` and write it (to ``<role>.key.new`` if pending)."""
        private = Ed25519PrivateKey.generate()
        self._write(self.path(role, pending=pending), private)
        return CryptoSigner(private)

    def load(self, role: str, *, pending: bool = False) -> CryptoSigner:
        """Load the role's key; every failure names the file and what to do about it."""
        return self.load_file(self.path(role, pending=pending), role)

    def load_file(self, path: Path, role: str = "this") -> CryptoSigner:
        """Load any key file written by this store (e.g. one in ``retired/``)."""
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except FileNotFoundError:
            where = "offline media" if role in OFFLINE_ROLES else "the fleet server"
            raise ManifestError(
                f"no {role} key here; the {role} key is kept on {where}: pass --keys DIR",
                file=path,
            ) from None
        except OSError as exc:
            raise ManifestError(f"cannot read {role} key: {exc.strerror}", file=path) from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ManifestError(
                f"private key is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
                "run chmod 600 on it",
                file=path,
            )
        try:
            private = serialization.load_pem_private_key(data, password=self._password)
        except TypeError:
            hint = (
                "key is encrypted: set QUANEDGE_KEY_PASSPHRASE or pass --passphrase"
                if self._password is None
                else "key is not encrypted: drop the passphrase"
            )
            raise ManifestError(hint, file=path) from None
        except ValueError:
            raise ManifestError(
                "cannot decrypt key: wrong passphrase or not a PEM private key", file=path
            ) from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ManifestError(
                f"expected an Ed25519 key, got {type(private).__name__}", file=path
            )
        return CryptoSigner(private)

    def promote(self, role: str, retired_keyids: list[str]) -> None:
        """Replace ``<role>.key`` by ``<role>.key.new``; the old file moves to ``retired/``."""
        current, pending = self.path(role), self.path(role, pending=True)
        if current.exists():
            retired = self.directory / "retired"
            retired.mkdir(mode=0o700, exist_ok=True)
            tag = retired_keyids[0][:16] if retired_keyids else "unknown"
            os.replace(current, retired / f"{role}-{tag}.key")
        os.replace(pending, current)
        _fsync_dir(self.directory)

    def _write(self, path: Path, private: Ed25519PrivateKey) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(self._password)
            if self._password
            else serialization.NoEncryption()
        )
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ManifestError("refusing to overwrite an existing key file", file=path) from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(self.directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
