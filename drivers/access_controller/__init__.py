"""ISAPI access controller (doors, card readers): door state polled, door commands, pushed events.

    settings.py  AccessControllerSettings + parse        driver.py   AccessControllerDriver (httpx)
    sim.py       a controller on HTTP (digest auth)      wiegand.py  Wiegand 26/34 card frames
"""

from __future__ import annotations

from typing import Any

from drivers.access_controller.settings import COMMANDS, AccessControllerSettings, parse
from drivers.kind import BuildContext, DeviceKind


def build(dev: AccessControllerSettings, ctx: BuildContext) -> Any:
    from drivers.access_controller.driver import AccessControllerDriver
    from drivers.allowlist_store import AllowListStore, store_path

    store = None if ctx.data_dir is None else AllowListStore(store_path(ctx.data_dir, dev.name), plates=False)
    return AccessControllerDriver(dev, on_event=ctx.events(dev.name) if dev.listen_port is not None else None,
                                  on_refused=ctx.refusals(dev.name), allowlist=store)


def simulators() -> dict[str, Any]:
    from drivers.access_controller.sim_cli import command

    return {"access-controller": command}


def _listen(dev: AccessControllerSettings) -> tuple[str, int] | None:
    return None if dev.listen_port is None else (dev.listen_host, dev.listen_port)


KIND = DeviceKind(
    name="access_controller", summary="ISAPI access controller: doors, card readers, pushed events",
    parse=parse, build=build, commands=COMMANDS, listens=lambda dev: dev.listen_port is not None,
    listen_address=_listen, simulators=simulators,
    firmware_refusal=(
        "an access controller's firmware upgrade is its maker's own ISAPI endpoint, which devices.md "
        "does not describe; a failed flash leaves the gate unusable until a site visit"))
