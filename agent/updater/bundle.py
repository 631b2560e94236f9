"""Agent bundles: the agent's code as one tar.gz, built off the box and unpacked safely on it.

    quanedge-bundle.json   {"format": 1, "version": "0.2.0", "packages": ["agent", "drivers", ...]}
    quanedge/ core/ agent/ drivers/ edge_models/ firmware_manifests/   plain Python packages (no build step)

A slot runs with `PYTHONPATH=<slot>`, so the bundle IS the code that runs: no pip on the box and
no network dependency at install time (third-party libraries come with the image). The bundle's
`agent/__init__.py` carries the same `__version__` as the manifest and the signed TUF target;
`read_manifest` refuses a bundle where they disagree.

`extract` accepts regular files and directories only, with relative names inside the target
(no absolute paths, no `..`, no links or devices), and caps the unpacked size.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path

from core.errors import QuanedgeError
from firmware_manifests.schema import Version

__all__ = ["BUNDLE_MANIFEST", "PACKAGES", "BundleError", "build_bundle", "copy_packages", "extract",
           "read_manifest"]

BUNDLE_MANIFEST = "quanedge-bundle.json"
PACKAGES = ("quanedge", "core", "agent", "drivers", "edge_models", "firmware_manifests")
MAX_UNPACKED = 512 * 1024 * 1024
_VERSION_LINE = re.compile(r'^__version__\s*=\s*["\']([^"\']+)["\']\s*$', re.MULTILINE)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")


class BundleError(QuanedgeError):
    """A bundle is malformed, unsafe, or not the version it claims to be."""


def copy_packages(src_root: Path, dest: Path, version: str, packages: Iterable[str] = PACKAGES) -> None:
    """Copy the packages under `src_root` into `dest`, stamp `version`, write the manifest."""
    dest.mkdir(parents=True, exist_ok=True)
    names = list(packages)
    for name in names:
        src = Path(src_root) / name
        if not (src / "__init__.py").is_file():
            raise BundleError(f"{src}: not a Python package")
        shutil.copytree(src, dest / name, ignore=_IGNORE, dirs_exist_ok=True)
    init = dest / "agent" / "__init__.py"
    text = init.read_text(encoding="utf-8")
    if not _VERSION_LINE.search(text):
        raise BundleError(f"{init}: no __version__ line to stamp")
    init.write_text(_VERSION_LINE.sub(f'__version__ = "{version}"', text, count=1), encoding="utf-8")
    (dest / BUNDLE_MANIFEST).write_text(json.dumps({"format": 1, "version": version, "packages": names}))


def build_bundle(src_root: Path, version: str, out: Path, *, packages: Iterable[str] = PACKAGES,
                 patch: Callable[[Path], None] | None = None, work_dir: Path | None = None) -> Path:
    """Build a bundle tar.gz from a source tree (release tooling and tests). `patch(tree)` may edit it."""
    Version.parse(version)
    work = Path(work_dir or out.parent) / f".bundle-{version}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        copy_packages(src_root, work, version, packages)
        if patch is not None:
            patch(work)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(work.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(work)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if path.is_file():
                    with path.open("rb") as fh:
                        tar.addfile(info, io.BytesIO(fh.read()))
                else:
                    tar.addfile(info)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def extract(bundle: Path, dest: Path, *, on_half: Callable[[], None] | None = None) -> None:
    """Unpack `bundle` into the new directory `dest` (regular files and directories only)."""
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                _check_member(m)
                total += m.size
                if total > MAX_UNPACKED:
                    raise BundleError(f"{bundle}: unpacks to more than {MAX_UNPACKED} bytes")
            dest.mkdir(parents=True)
            for i, m in enumerate(members):
                if hasattr(tarfile, "data_filter"):
                    tar.extract(m, dest, filter="data")
                else:  # pragma: no cover - Python < 3.10.12; _check_member already allows files/dirs only
                    tar.extract(m, dest)
                if on_half is not None and i == len(members) // 2:
                    on_half()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise BundleError(f"{bundle}: cannot unpack: {exc}") from exc


def _check_member(m: tarfile.TarInfo) -> None:
    name = m.name
    parts = Path(name).parts
    if not (m.isfile() or m.isdir()):
        raise BundleError(f"bundle member {name!r} is not a regular file or directory")
    if name.startswith(("/", "\\")) or ".." in parts or not parts or ":" in parts[0]:
        raise BundleError(f"bundle member {name!r} points outside the bundle")


def read_manifest(tree: Path, expected_version: Version) -> dict:
    """The unpacked bundle's manifest, checked against the signed version."""
    path = tree / BUNDLE_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: missing or unreadable: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("version"), str):
        raise BundleError(f"{path}: not a format-1 Quanedge bundle manifest")
    try:
        declared = Version.parse(data["version"])
    except ValueError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    if declared != expected_version:
        raise BundleError(f"{path}: bundle says version {declared}, the signed target says {expected_version}")
    init = tree / "agent" / "__init__.py"
    match = _VERSION_LINE.search(init.read_text(encoding="utf-8")) if init.is_file() else None
    if match is None or Version.parse(match[1]) != expected_version:
        raise BundleError(f"{init}: agent __version__ is not {expected_version}")
    return data
