"""Verify an update with TUF (python-tuf ngclient) before anything on the box changes.

``UpdateVerifier.verify_and_fetch(name)`` runs the TUF client workflow against the fleet's
repository (``<repo_url>metadata/`` and ``<repo_url>targets/``), then the Quanedge policy carried
in the target's signed custom fields, then downloads the file with length and hash checks. It
returns a ``VerifiedTarget`` in ``targets_cache_dir`` or raises ``UpdateRejected`` with a
machine-readable ``reason_code`` the fleet server records:

    tampered            bytes differ from what signed metadata vouches for
    bad_signature       metadata lacks a threshold of signatures from trusted (non-revoked) keys
    rollback            metadata older than what the box already trusts
    freeze              metadata expired (beyond the clock slack)
    mix_and_match       metadata files from different repository states
    wrong_hardware      the target does not list this box's hardware id
    downgrade           target version <= installed version
    too_old_to_upgrade  installed version < the target's min_from_version
    endless_data        the server sent more bytes than the signed length
    unknown_target      no such target, or it lacks valid Quanedge fields
    repository_unreachable  network/HTTP failure; retry later

tuf exceptions are mapped to these in ONE place (``_boundary`` + ``classify``). ngclient's
exceptions do not say which rule fired, so the mapping also uses the metadata file that was
being loaded (recorded by ``_ObservingFetcher``) and the versions the box trusted before the
refresh; that evidence is only used to *name* a rejection ngclient already made.

Clock slack: boxes without an RTC may run ahead. ngclient fixes one reference time per update
(spec 5.1 "fix time") in ``TrustedMetadataSet.reference_time`` and checks every expiry against
it; tuf 7 has no public setting for it, so ``_pin_reference_time`` sets it to
``now - clock_slack_s`` right after the Updater is built, before ``refresh()``. Metadata that
expired less than the slack ago is accepted; older metadata is still a freeze. A test pins this
seam, so a python-tuf upgrade that moves it fails loudly instead of silently dropping the slack.

The verifier is blocking (network and disk): from async code use ``averify_and_fetch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, NoReturn
from urllib import parse

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Snapshot, TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig, Urllib3Fetcher

from core.errors import ConfigError, QuanedgeError
from firmware_manifests.schema import TargetKind, TargetMeta, Version

__all__ = ["ReasonCode", "UpdateRejected", "UpdateVerifier", "VerifiedTarget", "classify"]

logger = logging.getLogger(__name__)


class ReasonCode(str, enum.Enum):
    TAMPERED = "tampered"
    BAD_SIGNATURE = "bad_signature"
    ROLLBACK = "rollback"
    FREEZE = "freeze"
    MIX_AND_MATCH = "mix_and_match"
    WRONG_HARDWARE = "wrong_hardware"
    DOWNGRADE = "downgrade"
    TOO_OLD_TO_UPGRADE = "too_old_to_upgrade"
    ENDLESS_DATA = "endless_data"
    UNKNOWN_TARGET = "unknown_target"
    REPOSITORY_UNREACHABLE = "repository_unreachable"


class UpdateRejected(QuanedgeError):
    """The update was refused; nothing was installed and the box's trusted metadata is intact."""

    def __init__(self, reason_code: ReasonCode | str, message: str, *, target: str | None = None):
        self.reason_code = ReasonCode(reason_code)
        self.message = message
        self.target = target
        super().__init__(f"{self.reason_code.value}: {message}")

    def to_record(self) -> dict[str, str | None]:
        """What the box reports to the fleet server."""
        return {"reason": self.reason_code.value, "target": self.target, "message": self.message}


@dataclass(frozen=True)
class VerifiedTarget:
    """A downloaded file whose bytes match signed, policy-checked metadata."""

    name: str
    path: Path
    kind: TargetKind
    version: Version
    sha256: str
    length: int


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


_METADATA_URL = re.compile(r"^(?:(?P<version>\d+)\.)?(?P<role>.+)\.json$")


@dataclass(frozen=True)
class _Observed:
    """The last metadata file downloaded: evidence for naming a rejection."""

    role: str
    requested_version: int | None
    data: bytes


class _ObservingFetcher(FetcherInterface):
    """Wraps a fetcher: records metadata downloads, spools targets in ``spool_dir``.

    Spooling next to the cache (not in /tmp, often a small tmpfs on a box) and stopping as soon
    as ``max_length`` is passed is what defeats an endless-data attack.
    """

    def __init__(self, inner: FetcherInterface, spool_dir: Path) -> None:
        self._inner = inner
        self._spool_dir = spool_dir
        self.last_metadata: _Observed | None = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._inner.fetch(url)

    def download_bytes(self, url: str, max_length: int) -> bytes:
        data = super().download_bytes(url, max_length)
        match = _METADATA_URL.match(parse.unquote(url.rsplit("/", 1)[-1]))
        if match:
            version = int(match["version"]) if match["version"] else None
            self.last_metadata = _Observed(match["role"], version, data)
        return data

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        received = 0
        with tempfile.TemporaryFile(dir=self._spool_dir) as spool:
            chunks = self.fetch(url)
            try:
                for chunk in chunks:
                    received += len(chunk)
                    if received > max_length:
                        raise tuf_exc.DownloadLengthMismatchError(
                            f"{url}: more than the signed length of {max_length} bytes"
                        )
                    spool.write(chunk)
            except tuf_exc.DownloadError:
                raise
            except Exception as exc:  # a connection broken mid-stream
                raise tuf_exc.DownloadError(f"download of {url} failed: {exc}") from exc
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # stop the stream now, do not drain what the server keeps sending
            spool.seek(0)
            yield spool


def classify(
    exc: Exception, *, phase: str, observed: _Observed | None, trusted: dict[str, int]
) -> ReasonCode:
    """Name the attack (or fault) behind a python-tuf exception.

    ``phase`` is "metadata" or "target"; ``trusted`` maps role -> version (and
    "meta:<file>" -> version listed in the trusted snapshot) from before the refresh.
    """
    if isinstance(exc, tuf_exc.DownloadLengthMismatchError):
        return ReasonCode.ENDLESS_DATA
    if isinstance(exc, tuf_exc.DownloadError):
        return ReasonCode.REPOSITORY_UNREACHABLE
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return ReasonCode.FREEZE
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return ReasonCode.BAD_SIGNATURE
    if phase == "target" or observed is None:
        return ReasonCode.TAMPERED
    if not isinstance(exc, (tuf_exc.BadVersionNumberError, tuf_exc.LengthOrHashMismatchError)):
        return ReasonCode.TAMPERED  # undecodable, wrong type, a listed file removed
    try:
        signed = Metadata.from_bytes(observed.data).signed
    except tuf_exc.RepositoryError:
        return ReasonCode.TAMPERED
    if signed.type != observed.role:
        return ReasonCode.TAMPERED
    if observed.role == "timestamp":  # timestamp or its snapshot version went backwards
        return ReasonCode.ROLLBACK
    if signed.version < trusted.get(observed.role, 0):
        return ReasonCode.ROLLBACK
    if isinstance(signed, Snapshot) and any(
        meta.version < trusted.get(f"meta:{name}", 0) for name, meta in signed.meta.items()
    ):
        return ReasonCode.ROLLBACK
    if observed.requested_version is not None and signed.version == observed.requested_version:
        return ReasonCode.TAMPERED  # the right version with other bytes than its parent lists
    return ReasonCode.MIX_AND_MATCH


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pin_reference_time(updater: Updater, when: datetime) -> None:
    """Set the fixed update start time ngclient checks expiry against (see module doc)."""
    trusted_set = getattr(updater, "_trusted_set", None)
    if trusted_set is None or not hasattr(trusted_set, "reference_time"):
        raise RuntimeError(
            "python-tuf no longer exposes Updater._trusted_set.reference_time; clock slack "
            "cannot be applied. Pin tuf to 7.0.x or port _pin_reference_time."
        )
    trusted_set.reference_time = when


class UpdateVerifier:
    """Verifies and fetches targets for one box; one instance per metadata_dir (ngclient is
    single-instance), calls are serialised by a lock.

    Args:
        metadata_dir: the box's trusted TUF cache. Provision it with the fleet's root.json
            (``metadata_dir/root.json``) at enrolment, or pass ``bootstrap_root`` (e.g. a root
            shipped in the read-only image) and every refresh re-verifies the cached chain from it.
        repo_url: base URL serving ``metadata/`` and ``targets/``.
        targets_cache_dir: where verified files land (and downloads are spooled).
        hardware: this box's hardware id, matched against the target's ``hardware`` list.
        installed_version: kind -> installed version string, or None if nothing is installed.
        clock_slack_s: accept metadata that expired less than this long ago (RTC-less boxes).
    """

    def __init__(
        self,
        metadata_dir: str | os.PathLike[str],
        repo_url: str,
        targets_cache_dir: str | os.PathLike[str],
        hardware: str,
        installed_version: Callable[[TargetKind], str | None],
        *,
        clock_slack_s: float = 3600.0,
        bootstrap_root: bytes | None = None,
        clock: Callable[[], datetime] = _utcnow,
        socket_timeout_s: int = 30,
        fetcher_factory: Callable[[], FetcherInterface] | None = None,
    ) -> None:
        if not isinstance(hardware, str) or not hardware.strip():
            raise ValueError(f"hardware must be this box's hardware id, got {hardware!r}")
        if not math.isfinite(clock_slack_s) or clock_slack_s < 0:
            raise ValueError(f"clock_slack_s must be >= 0 seconds, got {clock_slack_s!r}")
        if parse.urlsplit(repo_url).scheme not in ("http", "https"):
            raise ValueError(f"repo_url must be an http(s) URL, got {repo_url!r}")
        if not callable(installed_version):
            raise TypeError("installed_version must be a callable kind -> version string | None")
        self.metadata_dir = Path(metadata_dir)
        self.targets_cache_dir = Path(targets_cache_dir)
        self.hardware = hardware
        self.repo_url = repo_url if repo_url.endswith("/") else repo_url + "/"
        self.clock_slack = timedelta(seconds=clock_slack_s)
        self._installed_version = installed_version
        self._bootstrap = bootstrap_root
        self._clock = clock
        self._fetcher_factory = fetcher_factory or (
            lambda: Urllib3Fetcher(socket_timeout=socket_timeout_s, app_user_agent="quanedge-agent")
        )
        self._lock = threading.Lock()
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.targets_cache_dir.mkdir(parents=True, exist_ok=True)

    async def averify_and_fetch(self, target_name: str) -> VerifiedTarget:
        return await asyncio.to_thread(self.verify_and_fetch, target_name)

    def verify_and_fetch(self, target_name: str) -> VerifiedTarget:
        """Refresh metadata, check policy, download and verify ``target_name``."""
        with self._lock:
            fetcher = _ObservingFetcher(self._fetcher_factory(), self.targets_cache_dir)
            trusted = self._trusted_versions()
            updater = self._new_updater(fetcher)
            with self._boundary(target_name, "metadata", fetcher, trusted):
                updater.refresh()
                info = updater.get_targetinfo(target_name)
            if info is None:
                self._reject(ReasonCode.UNKNOWN_TARGET, "no such target in signed metadata", target_name)
            meta = self._check_policy(target_name, info)
            final = self.targets_cache_dir / parse.quote(target_name, "")
            if updater.find_cached_target(info, str(final)) is None:
                incoming = final.with_name(f".incoming-{final.name}")
                try:
                    with self._boundary(target_name, "target", fetcher, trusted):
                        updater.download_target(info, str(incoming))
                    with incoming.open("rb") as fh:
                        os.fsync(fh.fileno())
                    os.replace(incoming, final)
                    _fsync_dir(self.targets_cache_dir)
                finally:
                    incoming.unlink(missing_ok=True)
            logger.info("verified %s %s %s", meta.kind.value, target_name, meta.version)
            return VerifiedTarget(
                target_name, final, meta.kind, meta.version, info.hashes["sha256"], info.length
            )

    # ---- internals ---------------------------------------------------------------------
    def _new_updater(self, fetcher: FetcherInterface) -> Updater:
        anchor = self.metadata_dir / "root.json"
        try:
            updater = Updater(
                str(self.metadata_dir),
                self.repo_url + "metadata/",
                str(self.targets_cache_dir),
                self.repo_url + "targets/",
                fetcher=fetcher,
                config=UpdaterConfig(app_user_agent="quanedge-agent"),
                bootstrap=self._bootstrap,
            )
        except FileNotFoundError:
            raise ConfigError(
                "the box has no trusted root metadata", file=str(anchor),
                expected="the fleet's root.json, provisioned at enrolment",
            ) from None
        except tuf_exc.RepositoryError as exc:
            raise ConfigError(f"trusted root is not valid TUF root metadata: {exc}",
                              file=str(anchor)) from None
        _pin_reference_time(updater, self._clock() - self.clock_slack)
        return updater

    @contextlib.contextmanager
    def _boundary(
        self, target: str, phase: str, fetcher: _ObservingFetcher, trusted: dict[str, int]
    ) -> Iterator[None]:
        """The one place python-tuf exceptions become ``UpdateRejected``."""
        try:
            yield
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            reason = classify(exc, phase=phase, observed=fetcher.last_metadata, trusted=trusted)
            self._reject(reason, f"{type(exc).__name__}: {exc}", target, exc)

    def _reject(
        self, reason: ReasonCode, message: str, target: str, cause: BaseException | None = None
    ) -> NoReturn:
        logger.warning("update %s rejected (%s): %s", target, reason.value, message)
        raise UpdateRejected(reason, message, target=target) from cause

    def _check_policy(self, name: str, info: TargetFile) -> TargetMeta:
        try:
            meta = TargetMeta.from_custom(info.custom)
        except ValueError as exc:
            self._reject(ReasonCode.UNKNOWN_TARGET, f"not a Quanedge target: {exc}", name)
        if "sha256" not in info.hashes:
            self._reject(ReasonCode.UNKNOWN_TARGET, "signed metadata has no sha256 for it", name)
        if not meta.supports(self.hardware):
            self._reject(
                ReasonCode.WRONG_HARDWARE,
                f"built for {', '.join(meta.hardware)}; this box is {self.hardware}", name,
            )
        raw = self._installed_version(meta.kind)
        try:
            installed = None if raw is None else Version.parse(raw)
        except ValueError:
            raise ConfigError(
                "installed version is not a version", key=f"installed_version.{meta.kind.value}",
                value=raw, expected="e.g. 2.1.0",
            ) from None
        if installed is not None and meta.version <= installed:
            what = "the installed version" if meta.version == installed else "older than installed"
            self._reject(
                ReasonCode.DOWNGRADE, f"{meta.version} is {what} ({installed})", name
            )
        if meta.min_from_version is not None and (
            installed is None or installed < meta.min_from_version
        ):
            self._reject(
                ReasonCode.TOO_OLD_TO_UPGRADE,
                f"needs {meta.kind.value} >= {meta.min_from_version} installed, "
                f"box has {installed or 'none'}", name,
            )
        return meta

    def _trusted_versions(self) -> dict[str, int]:
        """Versions in the local cache before this refresh (classification evidence only)."""
        versions: dict[str, int] = {}
        for role in ("root", "timestamp", "snapshot", "targets"):
            try:
                signed = Metadata.from_bytes((self.metadata_dir / f"{role}.json").read_bytes()).signed
            except (OSError, tuf_exc.RepositoryError):
                continue
            versions[role] = signed.version
            if isinstance(signed, Snapshot):
                versions.update({f"meta:{n}": m.version for n, m in signed.meta.items()})
        return versions
