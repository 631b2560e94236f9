"""EV chargers over OCPP 1.6J: the box is the local Central System of a car park or roadside site.

Chargers connect to the box (ws://<listen>/<path>/<charge point id>, subprotocol ocpp1.6); their
boot, status, meter values and transactions become readings, answered once stored. See notes.md.
Only the settings are imported here: the `ocpp` and `websockets` packages are imported by `build`.
"""

from __future__ import annotations

from typing import Any

from drivers.kind import BuildContext, DeviceKind
from drivers.ocpp_charger.settings import COMMANDS, OcppChargerSettings, parse

__all__ = ["KIND"]


def _build(settings: OcppChargerSettings, ctx: BuildContext) -> Any:
    from drivers.ocpp_charger.driver import OcppChargerDriver

    return OcppChargerDriver(settings, ctx.events(settings.name), on_refused=ctx.refusals(settings.name))


def _simulators() -> dict[str, Any]:
    from drivers.ocpp_charger.sim_cli import command

    return {"ocpp-charger": command}


KIND = DeviceKind(
    name="ocpp_charger",
    summary="EV chargers over OCPP 1.6J (the box is their Central System)",
    parse=parse,
    build=_build,
    commands=COMMANDS,
    listens=lambda s: True,
    listen_address=lambda s: (s.listen_host, s.listen_port),
    simulators=_simulators,
    firmware_refusal=(
        'OCPP 1.6J has a path (UpdateFirmware, then FirmwareStatusNotification) but '
        "devices-city.md does not describe the chargers' side of it and the simulator does not "
        'implement it, so it is not offered yet'))
