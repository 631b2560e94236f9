"""Regenerate ``firmware_manifests/example/repo``: a small signed repository to read.

    python -m firmware_manifests.example.generate [OUT_DIR]

It holds one target of each kind and a rotated timestamp key (so there are 1.root.json and
2.root.json to chain through). The keys are generated in a temporary directory and thrown away:
nobody can sign for this repository, and no box should ever trust its root. Its timestamp
expires a day after generation, so to serve a live demo, run ``quanedge manifest init`` instead.
The target files are placeholders, not real bundles, models or firmware.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from firmware_manifests.repository import Repository

EXAMPLE_DIR = Path(__file__).parent / "repo"

TARGETS = [
    # name, kind, version, hardware, min_from
    ("agent-0.2.0.example", "agent_bundle", "0.2.0", ["qe-box-a", "qe-box-b"], "0.1.0"),
    ("models/loop-anomaly-1.3.0.example", "onnx_model", "1.3.0", ["qe-box-a", "qe-box-b"], None),
    ("signctl-v2-fw-2.1.0.example", "device_firmware", "2.1.0", ["signctl-v2"], "2.0.0"),
    ("district-7-config-5.example", "config_bundle", "5", ["qe-box-a"], None),
]


def generate(out: Path) -> Repository:
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory(prefix="qe-example-") as scratch:
        repo = Repository.init(out, keys_dir=Path(scratch) / "keys")
        for name, kind, version, hardware, min_from in TARGETS:
            src = Path(scratch) / name.replace("/", "_")
            src.write_text(f"placeholder for {name} ({kind} {version}); not a real artifact\n")
            repo.add_target(src, kind=kind, version=version, hardware=hardware,
                            min_from=min_from, name=name)
        repo.sign()
        repo.rotate_key("timestamp")
    shutil.rmtree(out / "staging", ignore_errors=True)
    return repo


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLE_DIR
    generate(target)
    print(f"example repository written to {target}")
