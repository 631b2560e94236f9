"""`quanedge agent read`: an installer's view of one device's live, decoded points.

Reads the device directly through its driver (not through the buffer), refreshing a rich table,
so a wiring or address mistake shows in seconds: a silent slave shows as a timeout, a wrong
word order as absurd values, an invalid marker as "missing".
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.config import AgentConfig
from core.errors import ConfigError, DriverError
from core.reading import Reading


def _table(device: str, readings: list[Reading], error: str | None, n: int, took_ms: float) -> Table:
    title = f"{device}: read #{n} in {took_ms:.0f} ms" if error is None else f"{device}: read #{n} FAILED"
    t = Table(title=title, caption=error or "")
    for col in ("point", "value", "unit", "quality"):
        t.add_column(col)
    for r in readings:
        value = "missing" if r.value is None else f"{r.value:.3f}".rstrip("0").rstrip(".")
        t.add_row(r.point, value, r.unit, r.quality.label())
    return t


async def live_read(cfg: AgentConfig, device_name: str, interval: float, count: int) -> None:
    """Any configured device, through the same driver factory the agent uses (agent.devices)."""
    from contextlib import AsyncExitStack

    from agent.devices import BuildContext, ManagedDriver, build_driver
    from drivers.registry import KINDS

    dev_cfg = cfg.device(device_name)
    if dev_cfg is None:
        raise ConfigError("no such device", file=str(cfg.path), key="device", value=device_name,
                          expected="one of " + ", ".join(d.name for d in cfg.devices))
    events: list[Reading] = []  # pushed by event-reporting devices (controllers, gates) meanwhile

    async def keep(rs: list[Reading]) -> None:
        events.extend(rs)
        del events[:-10]

    console = Console()
    last: list[Reading] = []
    n = 0
    async with AsyncExitStack() as stack:
        ctx = BuildContext({b.name: b for b in cfg.buses}, stack, keep, data_dir=cfg.box.data_dir)
        try:
            driver = build_driver(dev_cfg, ctx)
        except ValueError as exc:
            raise ConfigError(f"device settings refused by the {dev_cfg.kind} driver: {exc}", file=str(cfg.path),
                              key="device", value=device_name) from exc
        device = ManagedDriver(driver, asyncio.Lock(), owns_open=KINDS[dev_cfg.kind].owns_open)
        stack.push_async_callback(device.close)
        for sink in ctx.sinks.values():  # events pushed by the device go to the table, acknowledged
            task = asyncio.create_task(sink.run(), name=f"events:{sink.name}")
            stack.callback(task.cancel)
        with Live(_table(device_name, [], "connecting...", 0, 0), console=console, refresh_per_second=4) as live:
            while count == 0 or n < count:
                n += 1
                t0 = time.perf_counter()
                error = None
                try:
                    last = await device.read(dev_cfg.points or None)
                except DriverError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                live.update(_table(device_name, last + events, error, n, (time.perf_counter() - t0) * 1000))
                await asyncio.sleep(interval)
