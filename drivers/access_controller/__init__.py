"""ISAPI access controller (doors, card readers): door state polled, door commands, pushed events.

    settings.py  AccessControllerDeviceConfig + parse    driver.py   AccessControllerDriver (httpx)
    sim.py       a controller on HTTP (digest auth)      wiegand.py  Wiegand 26/34 card frames
"""

from __future__ import annotations

from typing import Any

from drivers.access_controller.settings import COMMANDS, AccessControllerDeviceConfig, parse
from drivers.kind import BuildContext, DeviceKind


def build(dev: AccessControllerDeviceConfig, ctx: BuildContext) -> Any:
    from drivers.access_controller.driver import AccessControllerDriver, AccessControllerSettings

    return AccessControllerDriver(dev.name, AccessControllerSettings(
        base_url=dev.url, username=dev.username, password=dev.password, doors=dev.doors, auth=dev.auth,
        timeout_s=dev.timeout_s, allowed_commands=frozenset(dev.allow_commands),
        listen_host=dev.listen_host or "127.0.0.1", listen_port=dev.listen_port, event_senders=dev.event_senders),
        on_event=ctx.events(dev.name) if dev.listen_port is not None else None, on_refused=ctx.refusals(dev.name))


def simulators() -> dict[str, Any]:
    from drivers.access_controller.sim_cli import command

    return {"access-controller": command}


def _listen(dev: AccessControllerDeviceConfig) -> tuple[str, int] | None:
    return None if dev.listen_port is None else (dev.listen_host or "127.0.0.1", dev.listen_port)


KIND = DeviceKind(
    name="access_controller", summary="ISAPI access controller: doors, card readers, pushed events",
    parse=parse, build=build, commands=COMMANDS, listens=lambda dev: dev.listen_port is not None,
    listen_address=_listen, simulators=simulators)
