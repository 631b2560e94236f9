"""kill -9 of the agent at random moments during ingest and drain, repeated; then every
acknowledged reading is in the fleet server exactly once (real processes, HTTP uplink)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from e2e_support import (
    box_config,
    enroll,
    health,
    http_uplink,
    start_agent,
    start_fleet,
    start_sim,
    stop,
    tcp_bus,
    wait_for,
)
from pause_points import SCRIPT as PAUSE_SCRIPT  # logs acknowledged appends (QUANEDGE_TEST_ACK_LOG)

CYCLES = int(os.environ.get("QUANEDGE_KILL_CYCLES", "50"))


@pytest.mark.slow
def test_kill9_cycles_lose_nothing_acknowledged_and_store_it_exactly_once(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path)
    sim, info = start_sim(tmp_path, "--tcp", "0", *sum((["--unit", str(u)] for u in range(1, 6)), []))
    agent = None
    try:
        devices = [(f"wxt-{u}", u) for u in range(1, 6)]
        config, hport = box_config(tmp_path, box="crash-box", bus=tcp_bus(info["tcp_port"]), devices=devices,
                                   uplink=http_uplink(fleet.url, batch_size=200), poll_s=0.05)
        enroll(fleet, config)
        ack_log = tmp_path / "acks.log"
        env = {"QUANEDGE_TEST_ACK_LOG": str(ack_log)}
        rng = random.Random(20261123)
        for cycle in range(CYCLES):
            agent = start_agent(tmp_path, config, env, main=[PAUSE_SCRIPT])
            wait_for(lambda: health(hport)["status"] in ("ok", "degraded"), 30, f"agent up (cycle {cycle})")
            time.sleep(rng.uniform(0.0, 0.8))  # somewhere in ingest / drain
            agent.send_signal(signal.SIGKILL)
            agent.wait()
        acked = [tuple(map(int, ln.split())) for ln in ack_log.read_text().splitlines() if ln.strip()]
        assert len(acked) > CYCLES, "the agent acknowledged too little to prove anything"
        # A last clean run drains everything that was buffered.
        agent = start_agent(tmp_path, config, env, main=[PAUSE_SCRIPT])
        last_acked = max(last for _, last in acked)

        def drained() -> bool:
            h = health(hport)
            return h["buffer_depth"] == 0 and h["uplink"]["sent"] > 0
        wait_for(drained, 60, "buffer drained")
        stop(agent)
        rows = fleet.readings("crash-box")
        seqs = [r[0] for r in rows]
        assert len(seqs) == len(set(seqs)), "a reading was stored twice"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap: some committed reading never arrived"
        stored = set(seqs)
        missing = [(first, last) for first, last in acked if not (first in stored and last in stored)]
        assert not missing, f"acknowledged readings missing from the fleet server: {missing[:5]}"
        assert last_acked <= seqs[-1]
        values = [r[4] for r in rows if r[3] == "air_temperature" and r[4] is not None]
        assert values and all(-50 < v < 60 for v in values)
    finally:
        stop(agent)
        stop(sim)
        stop(fleet.proc)
