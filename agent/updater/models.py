"""Model updates: install a signed model bundle as a new version beside the running one.

    <root>/models/<name>/<version>/   manifest.toml + model file (+ .bundle-sha256)

A model bundle is a tar.gz of one edge_models folder (`manifest.toml` and the file it names).
`install_model` unpacks it into `<version>.tmp`, checks the manifest is the model and version
the signed target says and that the file matches the manifest's sha256, fsyncs, then renames —
the same discipline as agent slots. The switch itself is `InferenceStage.swap()` (no reading is
lost: it swaps between two batches under the stage lock).

The committed version of each model lives in the journal's `installed` table. At start-up the
runtime asks `runtime_models(specs, cfg)` for the specs to load: the configured version, or the
committed one when newer, all resolved from `<root>/models`, which is seeded with copies of the
models shipped in the agent's own code (copies, not links: a pruned agent slot must not take a
model with it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.updater.bundle import BundleError, extract
from agent.updater.config import UpdaterConfig
from agent.updater.journal import Action, Journal
from agent.updater.slots import fsync_dir, fsync_tree
from firmware_manifests.schema import Version

__all__ = ["component_of", "install_model", "models_dir", "runtime_models", "seed_shipped"]

_SHA_FILE = ".bundle-sha256"
_SUFFIXES = re.compile(r"(\.tar\.gz|\.tgz|\.tar)$")


def models_dir(root: Path) -> Path:
    return Path(root) / "models"


def component_of(action: Action) -> str:
    """The model (or device) an action is for: `component` when the server sends it, else the
    target name's stem without its version (`models/wx_fault-1.1.0.tar.gz` -> `wx_fault`)."""
    if action.component:
        return action.component
    stem = _SUFFIXES.sub("", action.target_name.rsplit("/", 1)[-1])
    for sep in ("-", "_"):
        suffix = f"{sep}{action.version}"
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def install_model(bundle: Path, base: Path, name: str, version: str, sha256: str) -> Path:
    """Unpack a verified model bundle as `<base>/<name>/<version>`; idempotent for the same bundle."""
    from edge_models.manifest import ModelLoadError, load_manifest

    final = base / name / version
    marker = final / _SHA_FILE
    if final.is_dir() and marker.is_file() and marker.read_text().strip() == sha256:
        return final
    shutil.rmtree(final, ignore_errors=True)
    tmp = base / name / f"{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    extract(bundle, tmp)
    try:
        manifest = load_manifest(tmp / "manifest.toml")
    except ModelLoadError as exc:
        raise BundleError(f"model bundle: {exc}") from exc
    if manifest.name != name or Version.parse(manifest.version) != Version.parse(version):
        raise BundleError(f"model bundle holds {manifest.name}@{manifest.version}, the update is {name}@{version}")
    model_file = tmp / manifest.file
    if not model_file.is_file() or hashlib.sha256(model_file.read_bytes()).hexdigest() != manifest.sha256:
        raise BundleError(f"model bundle: {manifest.file} is missing or does not match the manifest's sha256")
    marker_tmp = tmp / _SHA_FILE
    marker_tmp.write_text(sha256 + "\n")
    fsync_tree(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    return final


def seed_shipped(base: Path, specs: Sequence[Any]) -> None:
    """Copy each configured model shipped with the agent into `<base>/<name>/<version>` (once)."""
    from edge_models.manifest import load_manifest
    from edge_models.runtime import default_models_dir, locate

    for spec in specs:
        final = base / spec.name / spec.version
        if (final / "manifest.toml").is_file():
            continue
        src = locate(default_models_dir(), spec.name, spec.version)
        if not (src / "manifest.toml").is_file():
            continue  # not shipped: loading it reports the missing model as usual
        manifest = load_manifest(src / "manifest.toml")
        if manifest.version != spec.version:
            continue
        tmp = base / spec.name / f"{spec.version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in ("manifest.toml", manifest.file):
            shutil.copy2(src / name, tmp / name)
        fsync_tree(tmp)
        os.rename(tmp, final)
        fsync_dir(final.parent)


def runtime_models(specs: Sequence[Any], cfg: UpdaterConfig) -> tuple[tuple[Any, ...], Path | None]:
    """(specs to load, models dir) for the runtime: committed model updates win over older config."""
    if not specs or not cfg.enabled:
        return tuple(specs), None
    base = models_dir(cfg.root)
    seed_shipped(base, specs)
    journal = Journal(cfg.journal_path)
    try:
        committed = journal.installed("model")
    finally:
        journal.close()
    out = []
    for spec in specs:
        version = committed.get(spec.name)
        if (version and Version.parse(version) > Version.parse(spec.version)
                and (base / spec.name / version / "manifest.toml").is_file()):
            spec = dataclasses.replace(spec, version=version)
        out.append(spec)
    return tuple(out), base
