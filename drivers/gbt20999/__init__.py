"""GB/T 20999-2017 signal controller over TCP (frames, reports, plan/stage/mode commands).

    settings.py  GbtSettings + parse        codec.py  frames <-> objects (escaping, CRC)
    driver.py    GbtDriver                  sim.py    a controller on TCP
"""

from __future__ import annotations

from typing import Any

from drivers.gbt20999.settings import COMMANDS, GbtSettings, parse
from drivers.kind import BuildContext, DeviceKind, SignalPlan


def build(dev: GbtSettings, ctx: BuildContext) -> Any:
    from drivers.gbt20999.driver import GbtDriver

    return GbtDriver(dev, on_report=ctx.events(dev.name, drop_when_full=True))


def simulators() -> dict[str, Any]:
    from drivers.gbt20999.sim_cli import command

    return {"gbt20999": command}


KIND = DeviceKind(name="gbt20999", summary="GB/T 20999 signal controller over TCP",
                  parse=parse, build=build, commands=COMMANDS, simulators=simulators,
                  signal_plan=SignalPlan(point="plan", command="set_plan", argument="plan"),
    firmware_refusal=(
        'the GB/T 20999 frames devices.md describes carry no firmware transfer: a junction '
        "controller is reflashed on site with its maker's tool"))
