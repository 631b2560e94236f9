"""Plate-reading camera at a community gate, pushing plate events over HTTP to the box.

    settings.py  PlateCameraSettings + parse        driver.py  PlateReceiverDriver (the push receiver)
    sim.py       a camera pushing plates            (gate rules: drivers/gates.py, shared with access controllers)
"""

from __future__ import annotations

from typing import Any

from drivers.kind import BuildContext, DeviceKind
from drivers.plate_camera.settings import COMMANDS, PlateCameraSettings, parse


def build(dev: PlateCameraSettings, ctx: BuildContext) -> Any:
    from drivers.allowlist_store import AllowListStore, store_path
    from drivers.plate_camera.driver import PlateReceiverDriver

    store = None if ctx.data_dir is None else AllowListStore(store_path(ctx.data_dir, dev.name), cards=False)
    return PlateReceiverDriver(dev, ctx.events(dev.name), on_refused=ctx.refusals(dev.name), allowlist=store)


def simulators() -> dict[str, Any]:
    from drivers.plate_camera.sim_cli import command

    return {"plate-camera": command}


KIND = DeviceKind(
    name="plate_camera", summary="plate-reading camera pushing events to the box (gate)",
    parse=parse, build=build, commands=COMMANDS, listens=lambda dev: True,
    listen_address=lambda dev: (dev.listen_host, dev.listen_port), simulators=simulators,
    firmware_refusal=(
        "a plate camera's firmware upgrade is its maker's own HTTP interface, which devices.md "
        'does not describe'))
