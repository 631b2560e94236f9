"""Agent software slots: versioned directories and two atomically switched symlinks.

    <root>/versions/<version>/      one unpacked bundle each (+ .bundle-sha256: what it came from)
    <root>/versions/<version>.tmp/  an install in progress (never run; removed on the next install)
    <root>/current  -> versions/<v> what the supervisor runs
    <root>/previous -> versions/<v> what a failed health check rolls back to

This is RAUC/Mender A/B with directories instead of partitions: a version directory is complete
before anything points at it (unpack into .tmp, fsync every file and directory, rename), and a
switch is one `rename(2)` of a new symlink over the old one, followed by an fsync of `<root>`, so
after a power cut `current` names either the old or the new version, never a half-written one.
Nothing here removes a version that `current` or `previous` names.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from agent.updater.bundle import copy_packages, extract, read_manifest
from core.errors import QuanedgeError
from firmware_manifests.schema import Version

__all__ = ["SlotError", "Slots", "fsync_dir", "fsync_tree"]

log = logging.getLogger(__name__)
_SHA_FILE = ".bundle-sha256"


class SlotError(QuanedgeError):
    """A slot operation is impossible (missing version, refusing to touch the running one)."""


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(top: Path) -> None:
    """fsync every file, then every directory bottom-up (a rename later publishes whole contents)."""
    for dirpath, _dirs, files in os.walk(top, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


class Slots:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"

    # --- reading ----------------------------------------------------------------------------
    def _pointer(self, name: str) -> str | None:
        try:
            return Path(os.readlink(self.root / name)).name
        except (FileNotFoundError, OSError):
            return None

    def current_version(self) -> str | None:
        return self._pointer("current")

    def previous_version(self) -> str | None:
        return self._pointer("previous")

    def path(self, version: str) -> Path:
        return self.versions / version

    def resolve_current(self) -> Path:
        """The real directory of the current version (what a new child process runs)."""
        version = self.current_version()
        if version is None or not self.path(version).is_dir():
            raise SlotError(f"{self.root}: no current agent version")
        return self.path(version).resolve()

    def installed_versions(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))

    # --- changing ---------------------------------------------------------------------------
    def install(self, bundle: Path, version: str, sha256: str, *, on_half: Callable[[], None] | None = None) -> Path:
        """Unpack a verified bundle as `versions/<version>`; idempotent (same sha256: reused)."""
        final = self.path(version)
        if final.is_dir():
            marker = final / _SHA_FILE
            if marker.is_file() and marker.read_text().strip() == sha256:
                return final
            if version in (self.current_version(), self.previous_version()):
                raise SlotError(f"{final}: another build of {version} is in use; refusing to replace it")
            shutil.rmtree(final)
        self.versions.mkdir(parents=True, exist_ok=True)
        tmp = self.path(f"{version}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        extract(bundle, tmp, on_half=on_half)
        read_manifest(tmp, Version.parse(version))
        (tmp / _SHA_FILE).write_text(sha256 + "\n")
        fsync_tree(tmp)
        os.rename(tmp, final)
        fsync_dir(self.versions)
        return final

    def bootstrap(self, src_root: Path, version: str) -> bool:
        """First start: make the running code `versions/<version>` and point `current` at it.
        Returns False when a current version already exists (nothing done)."""
        current = self.current_version()
        if current is not None and self.path(current).is_dir():
            return False
        tmp = self.path(f"{version}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        copy_packages(src_root, tmp, version)
        (tmp / _SHA_FILE).write_text("bootstrap\n")
        fsync_tree(tmp)
        final = self.path(version)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(self.versions)
        self.switch(version, previous=None)
        log.info("slots: bootstrapped %s from %s", version, src_root)
        return True

    def switch(self, to: str, *, previous: str | None) -> None:
        """Point `previous` then `current` at versions (each an atomic symlink replace)."""
        if not self.path(to).is_dir():
            raise SlotError(f"{self.path(to)}: no such installed version")
        if previous is None:
            (self.root / "previous").unlink(missing_ok=True)
        elif self.previous_version() != previous:
            self._link("previous", previous)
        if self.current_version() != to:
            self._link("current", to)
        fsync_dir(self.root)

    def discard(self, version: str) -> None:
        """Remove an installed version that nothing points at (a failed or canceled update)."""
        if version in (self.current_version(), self.previous_version()):
            return
        shutil.rmtree(self.path(version), ignore_errors=True)
        shutil.rmtree(self.path(f"{version}.tmp"), ignore_errors=True)

    def prune(self) -> list[str]:
        """Remove every version but current and previous (and leftover .tmp dirs)."""
        keep = {self.current_version(), self.previous_version()}
        removed = []
        if self.versions.is_dir():
            for p in self.versions.iterdir():
                if p.name not in keep:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed

    def _link(self, name: str, version: str) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.join("versions", version), tmp)
        os.replace(tmp, self.root / name)
