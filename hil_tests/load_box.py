"""A box under load, for delivery scenarios: the agent's own buffer, drain and uplink (from a box
config, as `quanedge agent run` builds them), fed by a steady stream of synthetic readings
instead of a device bus, so that tens of thousands of readings can be taken in seconds.

    python -m hil_tests.load_box --config box.toml --readings 20000 --rate 2000

Every reading is appended durably before it counts as taken. The process prints one JSON line
per second ({"taken", "sent", "depth", "error"}) and a last line with "done": true once all
readings are taken and the buffer has drained; it then stays up (so a scenario can still watch it)
until SIGTERM. kill -9 at any moment loses nothing that was taken: the buffer file has it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from agent.buffer import DurableBuffer
from agent.config import load_config
from agent.drain import Drain
from agent.runtime import GIL_SWITCH_INTERVAL_S, make_uplink_factory
from core.reading import Reading


async def run(config: Path, readings: int, rate: float, chunk: int, prefill: bool) -> None:
    cfg = load_config(config)
    name, make_uplink = make_uplink_factory(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with DurableBuffer(cfg.buffer) as buffer:
        drain = Drain(buffer, make_uplink, name=name, batch_size=cfg.uplink.batch_size)
        taken = int(buffer.stats()["next_seq"]) - int(buffer.stats()["base_seq"])
        drain_started = time.monotonic()
        if prefill:  # take everything first, then time the drain of a full buffer
            while taken < readings:
                n = min(5000, readings - taken)
                await buffer.append([Reading("load", f"p{(taken + i) % 50}", float(taken + i), "", time.time())
                                     for i in range(n)])
                taken += n
            drain_started = time.monotonic()
        draining = asyncio.create_task(drain.run())

        async def produce() -> None:
            nonlocal taken
            t0 = time.monotonic()
            sent_at_start = taken
            while taken < readings:
                n = min(chunk, readings - taken)
                now = time.time()
                await buffer.append([Reading("load", f"p{(taken + i) % 50}", float(taken + i), "", now)
                                     for i in range(n)])
                taken += n
                ahead = (taken - sent_at_start) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)

        producing = asyncio.create_task(produce())
        done, tick = False, 0
        final: dict[str, object] = {}
        while not stop.is_set():
            stats = buffer.stats()
            finished = producing.done() and stats["depth"] == 0
            if tick % 20 == 0 or (finished and not done):
                line = {"taken": taken, "sent": drain.sent_total, "depth": stats["depth"], "error": drain.last_error,
                        "next_seq": stats["next_seq"], "base": stats["base_seq"]}
                if finished and not done:
                    done = True
                    final = {"done": True, "drain_s": round(time.monotonic() - drain_started, 3)}
                line.update(final)
                print(json.dumps(line), flush=True)
            tick += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
        for task in (producing, draining):
            task.cancel()
        await asyncio.gather(producing, draining, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--readings", type=int, required=True, help="readings to take in all (across restarts)")
    p.add_argument("--rate", type=float, default=2000.0, help="readings per second")
    p.add_argument("--chunk", type=int, default=50, help="readings per append")
    p.add_argument("--prefill", action="store_true", help="take every reading first, then start the drain")
    args = p.parse_args(argv)
    if args.readings < 1 or args.rate <= 0 or args.chunk < 1:
        p.error("--readings, --rate and --chunk must be positive")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as `quanedge agent run` does
    asyncio.run(run(args.config, args.readings, args.rate, args.chunk, args.prefill))
    return 0


if __name__ == "__main__":
    sys.exit(main())
