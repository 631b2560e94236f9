"""Agent slots and bundles: safe unpacking, version checks, atomic switch, idempotent install,
and an install killed half-way (real process, kill -9) that the next install repairs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from pause_points import with_tests_on_path
from updater_support import REPO_ROOT, wait_until

from agent.updater.bundle import BundleError, build_bundle, read_manifest
from agent.updater.slots import SlotError, Slots
from firmware_manifests.schema import Version


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bundles")
    return {v: build_bundle(REPO_ROOT, v, d / f"agent-{v}.tar.gz") for v in ("0.2.0", "0.3.0")}


def evil(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def test_install_unpacks_a_complete_version_and_is_idempotent(tmp_path: Path, bundles) -> None:
    slots = Slots(tmp_path)
    path = slots.install(bundles["0.2.0"], "0.2.0", "sha-a")
    assert read_manifest(path, Version.parse("0.2.0"))["packages"] == ["quanedge", "core", "agent", "drivers",
                                                                      "edge_models", "firmware_manifests"]
    assert (path / "quanedge" / "__main__.py").is_file() and (path / "core" / "reading.py").is_file()
    assert '__version__ = "0.2.0"' in (path / "agent" / "__init__.py").read_text()
    mtime = (path / "agent" / "__init__.py").stat().st_mtime_ns
    assert slots.install(bundles["0.2.0"], "0.2.0", "sha-a") == path  # same bundle: reused
    assert (path / "agent" / "__init__.py").stat().st_mtime_ns == mtime
    assert slots.installed_versions() == ["0.2.0"]


def test_a_bundle_that_is_not_the_signed_version_is_refused(tmp_path: Path, bundles) -> None:
    slots = Slots(tmp_path)
    with pytest.raises(BundleError, match="bundle says version 0.2.0, the signed target says 0.3.0"):
        slots.install(bundles["0.2.0"], "0.3.0", "sha")
    assert slots.installed_versions() == []


@pytest.mark.parametrize("member", [
    tarfile.TarInfo("../escape.py"),
    tarfile.TarInfo("/etc/cron.d/x"),
    (lambda t: (setattr(t, "type", tarfile.SYMTYPE), setattr(t, "linkname", "/etc/passwd"), t)[-1])(
        tarfile.TarInfo("agent/link")),
    (lambda t: (setattr(t, "type", tarfile.CHRTYPE), t)[-1])(tarfile.TarInfo("dev")),
])
def test_unsafe_bundle_members_are_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    slots = Slots(tmp_path / "root")
    with pytest.raises(BundleError):
        slots.install(evil(tmp_path / "evil.tar.gz", member), "0.2.0", "sha")
    assert not (tmp_path / "escape.py").exists()
    assert slots.installed_versions() == []


def test_switch_is_an_atomic_pointer_pair_and_prune_keeps_both(tmp_path: Path, bundles) -> None:
    slots = Slots(tmp_path)
    assert slots.bootstrap(REPO_ROOT, "0.1.0") is True
    assert slots.bootstrap(REPO_ROOT, "0.1.0") is False
    assert slots.current_version() == "0.1.0" and slots.previous_version() is None
    for v in ("0.2.0", "0.3.0"):
        slots.install(bundles[v], v, v)
    slots.switch("0.2.0", previous="0.1.0")
    assert os.readlink(tmp_path / "current") == "versions/0.2.0"
    assert (slots.current_version(), slots.previous_version()) == ("0.2.0", "0.1.0")
    assert slots.resolve_current() == (tmp_path / "versions" / "0.2.0").resolve()
    slots.discard("0.2.0")  # refuses silently: it is current
    assert slots.path("0.2.0").is_dir()
    assert slots.prune() == ["0.3.0"]
    assert slots.installed_versions() == ["0.1.0", "0.2.0"]
    with pytest.raises(SlotError):
        slots.switch("9.9.9", previous=None)
    assert not list(tmp_path.glob(".*.tmp"))


INSTALL = """
import sys
from pathlib import Path
from agent.updater.slots import Slots
from pause_points import EnvPause
Slots(Path(sys.argv[1])).install(Path(sys.argv[2]), "0.2.0", "sha", on_half=lambda: EnvPause().reached("installing"))
"""


def test_an_install_killed_half_way_leaves_no_version_and_is_redone(tmp_path: Path, bundles) -> None:
    marker = tmp_path / "paused"
    env = with_tests_on_path({**os.environ, "QUANEDGE_UPDATER_PAUSE_AT": "installing",
                              "QUANEDGE_UPDATER_PAUSE_FILE": str(marker)})
    proc = subprocess.Popen([sys.executable, "-c", INSTALL, str(tmp_path / "root"), str(bundles["0.2.0"])], env=env)
    try:
        wait_until(marker.exists, 60, "the install to pause half-way")
        partial = list((tmp_path / "root" / "versions" / "0.2.0.tmp").rglob("*"))
        assert partial, "nothing unpacked yet: the kill would not be mid-install"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    slots = Slots(tmp_path / "root")
    assert slots.installed_versions() == []  # only a .tmp: never a half version
    path = slots.install(bundles["0.2.0"], "0.2.0", "sha")
    assert read_manifest(path, Version.parse("0.2.0"))
    assert not (tmp_path / "root" / "versions" / "0.2.0.tmp").exists()
    files = {p.relative_to(path) for p in path.rglob("*.py")}
    assert {Path("agent/updater/slots.py"), Path("drivers/modbus/driver.py"), Path("core/reading.py")} <= files
