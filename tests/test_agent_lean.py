"""A box runs only the agent: `quanedge agent ...` must not import the server stack or training tools."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("fastapi", "starlette", "uvicorn", "sqlite_utils", "psycopg", "sklearn", "skl2onnx", "onnx",
             "fleet_server", "firmware_manifests")

PROBE = """
import json, sys
from quanedge.cli import build_app
build_app(["agent", "run"])
import agent.runtime, agent.config, agent.uplink.mqtt, agent.uplink.http, drivers.modbus.driver
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules)))
"""


def test_agent_run_path_imports_no_server_or_training_stack() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(FORBIDDEN), sorted(loaded & set(FORBIDDEN))


def test_pyproject_base_install_has_no_server_stack() -> None:
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for pkg in ("fastapi", "uvicorn", "sqlite-utils", "psycopg", "scikit-learn", "skl2onnx"):
        assert pkg not in base, f"{pkg} must be an extra, not a box dependency"
    assert "fastapi" in " ".join(project["optional-dependencies"]["fleet"])
