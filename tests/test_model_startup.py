"""A model that cannot be loaded at start-up: a clear error from check-config, and a running agent
that keeps its data path and reports the failure instead of exiting into a crash loop."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from agent.buffer import DurableBuffer
from agent.config import load_config
from agent.runtime import run_agent


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(tmp_path: Path, version: str) -> Path:
    p = tmp_path / "box.toml"
    p.write_text(f"""
[box]
id = "m-box"
data_dir = "data"

[uplink]
kind = "mqtt"
[uplink.mqtt]
host = "127.0.0.1"
port = {dead_port()}

[health]
enabled = false

[[model]]
name = "wx_fault"
version = "{version}"

[[model]]
name = "rain_nowcast"
version = "1.0.0"
""")
    return p


def test_check_config_names_the_model_that_cannot_load(tmp_path: Path) -> None:
    path = write(tmp_path, "9.9.9")
    r = subprocess.run([sys.executable, "-m", "quanedge", "agent", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout
    assert "wx_fault@9.9.9" in r.stderr and "Traceback" not in r.stderr
    ok = subprocess.run([sys.executable, "-m", "quanedge", "agent", "check-config", str(write(tmp_path, "1.0.0"))],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "2 model(s)" in ok.stdout, ok.stderr


async def test_the_agent_runs_without_the_bad_model_and_records_why(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "9.9.9"))
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(cfg, stop, install_signals=False))
    await asyncio.sleep(1.0)
    assert not task.done(), "the agent must not exit over a model"
    stop.set()
    await asyncio.wait_for(task, 15)
    async with DurableBuffer(cfg.buffer) as buffer:
        rows = await buffer.peek(100)
    [event] = [r for r in rows if r.point == "model_status.load"]
    assert event.device == "m-box" and "wx_fault@9.9.9" in event.text
