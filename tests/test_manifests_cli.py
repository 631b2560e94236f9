"""`quanedge manifest` commands through typer's CliRunner, on real repositories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata
from typer.testing import CliRunner

from firmware_manifests.cli import app
from firmware_manifests.example.generate import TARGETS, generate
from firmware_manifests.repository import Repository
from firmware_manifests.schema import TargetMeta


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200", "QUANEDGE_KEY_PASSPHRASE": None})


def ok(runner: CliRunner, *args: str, **kw) -> str:
    result = runner.invoke(app, [str(a) for a in args], **kw)
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(runner: CliRunner, *args: str, **kw) -> str:
    result = runner.invoke(app, [str(a) for a in args], **kw)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    return result.stderr


@pytest.fixture
def fw(tmp_path: Path) -> Path:
    path = tmp_path / "signctl-v2-2.1.0.bin"
    path.write_bytes(b"\x7fELF firmware" * 100)
    return path


def test_init_add_sign_show(runner, tmp_path, fw) -> None:
    repo_dir = tmp_path / "repo"
    out = ok(runner, "init", repo_dir, "--timestamp-expiry-hours", "6")
    assert "1.root.json" in out and "NOT encrypted" in out
    assert json.loads((repo_dir / "repo.json").read_text())["timestamp_expiry_s"] == 6 * 3600
    out = ok(runner, "add", repo_dir, fw, "--kind", "device_firmware", "--version", "2.1.0",
             "--hardware", "signctl-v2,signctl-v3", "--hardware", "signctl-v4", "--min-from", "2.0.0")
    assert "Staged signctl-v2-2.1.0.bin" in out
    shown = ok(runner, "show", repo_dir)
    assert re.search(r"signctl-v2-2\.1\.0\.bin\s*│\s*staged", shown)
    assert "Published targets v2, snapshot v2, timestamp v2" in ok(runner, "sign", repo_dir)
    shown = ok(runner, "show", repo_dir)
    row = next(line for line in shown.splitlines() if "signctl-v2-2.1.0.bin" in line)
    for cell in ("published", "device_firmware", "2.1.0", "signctl-v2", "2.0.0", "1300"):
        assert cell in row
    assert re.search(r"timestamp\s*│\s*2\s*│.*│\s*6h\s*│", shown)
    meta = TargetMeta.from_custom(Repository(repo_dir).targets().signed.targets[fw.name].custom)
    assert meta.hardware == ("signctl-v2", "signctl-v3", "signctl-v4")


def test_refresh_timestamp_and_rotate_key(runner, tmp_path) -> None:
    repo_dir = tmp_path / "repo"
    ok(runner, "init", repo_dir)
    assert "timestamp v2 (snapshot v1)" in ok(runner, "refresh-timestamp", repo_dir)
    out = ok(runner, "rotate-key", repo_dir, "--role", "root")
    assert "Rotated root key" in out and "root v2" in out
    assert re.search(r"root\s*│\s*2\s*│", ok(runner, "show", repo_dir))
    assert (repo_dir / "metadata" / "2.root.json").exists()


def test_rotate_key_rejects_unknown_roles(runner, tmp_path) -> None:
    ok(runner, "init", tmp_path / "repo")
    result = runner.invoke(app, ["rotate-key", str(tmp_path / "repo"), "--role", "admin"])
    assert result.exit_code == 2 and "admin" in result.output


def test_errors_name_the_file_without_traceback(runner, tmp_path, fw) -> None:
    repo_dir = tmp_path / "repo"
    assert "repo.json: not a Quanedge update repository" in fails(runner, "show", repo_dir)
    ok(runner, "init", repo_dir)
    assert "already a repository" in fails(runner, "init", repo_dir)
    err = fails(runner, "add", repo_dir, fw, "--kind", "onnx_model", "--version", "v2.x",
                "--hardware", "a")
    assert fw.name in err and "not a version: 'v2.x'" in err
    err = fails(runner, "add", repo_dir, tmp_path / "missing.bin", "--kind", "onnx_model",
                "--version", "1", "--hardware", "a")
    assert "missing.bin: no such file" in err
    err = fails(runner, "sign", repo_dir, "--keys", tmp_path / "usb")
    assert "usb/targets.key: no targets key here" in err and "--keys" in err


def test_serve_refuses_a_directory_that_is_not_a_repository(runner, tmp_path) -> None:
    assert "not a Quanedge update repository" in fails(runner, "serve", tmp_path, "--port", "0")


def test_passphrase_from_the_environment(runner, tmp_path) -> None:
    repo_dir = tmp_path / "repo"
    out = ok(runner, "init", repo_dir, env={"QUANEDGE_KEY_PASSPHRASE": "s3cret"})
    assert "encrypted" in out and "NOT" not in out
    assert "key is encrypted: set QUANEDGE_KEY_PASSPHRASE" in fails(runner, "sign", repo_dir)
    assert "wrong passphrase" in fails(runner, "sign", repo_dir,
                                       env={"QUANEDGE_KEY_PASSPHRASE": "guess"})
    ok(runner, "sign", repo_dir, env={"QUANEDGE_KEY_PASSPHRASE": "s3cret"})


def test_ask_passphrase_prompts_twice(runner, tmp_path) -> None:
    ok(runner, "init", tmp_path / "repo", "--ask-passphrase", input="pw\npw\n")
    assert b"ENCRYPTED" in (tmp_path / "repo" / "keys" / "root.key").read_bytes()


def test_every_command_is_documented() -> None:
    readme = (Path(__file__).parents[1] / "firmware_manifests" / "README.md").read_text()
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert names == {"init", "add", "sign", "refresh-timestamp", "rotate-key", "show", "serve"}
    for name in names:
        assert f"`{name} DIR" in readme, name


def test_committed_example_is_a_consistent_signed_repository(tmp_path) -> None:
    example = Path(__file__).parents[1] / "firmware_manifests" / "example" / "repo"
    meta = example / "metadata"
    root1 = Metadata.from_bytes((meta / "1.root.json").read_bytes())
    root2 = Metadata.from_bytes((meta / "2.root.json").read_bytes())
    root1.signed.verify_delegate("root", root2.signed_bytes, root2.signatures)
    timestamp = Metadata.from_bytes((meta / "timestamp.json").read_bytes())
    root2.signed.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    snap_bytes = (meta / f"{timestamp.signed.snapshot_meta.version}.snapshot.json").read_bytes()
    timestamp.signed.snapshot_meta.verify_length_and_hashes(snap_bytes)
    snapshot = Metadata.from_bytes(snap_bytes)
    root2.signed.verify_delegate("snapshot", snapshot.signed_bytes, snapshot.signatures)
    t_meta = snapshot.signed.meta["targets.json"]
    t_bytes = (meta / f"{t_meta.version}.targets.json").read_bytes()
    t_meta.verify_length_and_hashes(t_bytes)
    targets = Metadata.from_bytes(t_bytes)
    root2.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    assert sorted(targets.signed.targets) == sorted(t[0] for t in TARGETS)
    for info in targets.signed.targets.values():
        TargetMeta.from_custom(info.custom)
        with open(example / "targets" / info.get_prefixed_paths()[0], "rb") as fh:
            info.verify_length_and_hashes(fh)
    assert not (example / "keys").exists() and not (example / "staging").exists()
    # the generator still produces the same shape
    generate(tmp_path / "again")
    assert sorted(p.name for p in (tmp_path / "again" / "metadata").iterdir()) == sorted(
        p.name for p in meta.iterdir()
    )
