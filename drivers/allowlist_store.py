"""One device's allow-list document on the box's disk: `<data_dir>/allowlists/<device>.json`.

Written so that a power cut at any moment leaves either the old document or the new one, never a
mix: the bytes go to a fresh temp file in the same folder (mode 0600: it names who may enter),
which is fsynced, renamed over the document with os.replace (atomic on POSIX), and then the folder
is fsynced so the rename itself is on disk. Only after that does `save` return, so a command
acknowledged as done survives a crash right after it.

A temp file left by a crash mid-write (`.<device>.json.<random>.tmp`) is never read, only
removed by the next `save`. A document that cannot be read or does not validate raises
`AllowListUnreadable` naming the file and the reason; the caller decides what to run meanwhile
(the plate-camera receiver falls back to its config list and reports the problem).

One writer per file: the driver owning the device serialises its changes (drivers/allowlist_keeper.py).
The calls are blocking file I/O: the drivers run them in a worker thread (asyncio.to_thread) for
writes; the one read happens when the driver is built, before the device is served.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from drivers.allowlist import AllowList, parse_document

__all__ = ["AllowListStore", "AllowListUnreadable", "MAX_FILE_BYTES", "store_path"]

#: A stored document larger than this is refused unread (200,000 entries of 32 characters fit).
MAX_FILE_BYTES = 16 << 20


class AllowListUnreadable(ValueError):
    """The stored document exists but cannot be used (unreadable, not JSON, fails validation)."""


def store_path(data_dir: Path, device: str) -> Path:
    """Where a device's document lives. Device names are config names (letters, digits, . _ -)."""
    if not device or "/" in device or "\\" in device or device.startswith("."):
        raise ValueError(f"device name {device!r} cannot name an allow-list file")
    return Path(data_dir) / "allowlists" / f"{device}.json"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AllowListStore:
    def __init__(self, path: Path, *, plates: bool = True, cards: bool = True) -> None:
        self.path = Path(path)
        self.plates = plates  # the device kind reads plates / cards (else a stored document listing some
        self.cards = cards    # is refused, as the command would have been)

    def load(self) -> AllowList | None:
        """The stored document, or None when there is none yet; AllowListUnreadable otherwise."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AllowListUnreadable(f"{self.path}: cannot read the allow-list: {exc.strerror or exc}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise AllowListUnreadable(f"{self.path}: larger than {MAX_FILE_BYTES} bytes; not read")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise AllowListUnreadable(f"{self.path}: not a JSON document ({type(exc).__name__}: "
                                      f"{str(exc)[:120]})") from None
        try:
            return parse_document(doc, plates=self.plates, cards=self.cards)
        except ValueError as exc:
            raise AllowListUnreadable(f"{self.path}: {exc}") from None

    def save(self, doc: AllowList) -> None:
        """Write `doc` durably (temp file, fsync, os.replace, folder fsync); returns once on disk."""
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_leftovers()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(doc.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(folder)

    def _remove_leftovers(self) -> None:
        """Temp files a crash left behind (never read; removed so they do not pile up)."""
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()
