"""Every device kind the box knows: one line per kind (its folder's KIND descriptor).

Importing this module imports each kind's settings only; drivers, simulators and their libraries
are imported when a device of that kind is built or simulated.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from drivers.access_controller import KIND as ACCESS_CONTROLLER
from drivers.gbt20999 import KIND as GBT20999
from drivers.kind import DeviceKind
from drivers.modbus import KIND as MODBUS
from drivers.ntcip import KIND as NTCIP
from drivers.ocpp_charger import KIND as OCPP_CHARGER
from drivers.parking import KIND as PARKING
from drivers.plate_camera import KIND as PLATE_CAMERA
from drivers.wxt_serial import KIND as WXT_SERIAL

__all__ = ["KINDS", "kind"]

KINDS: Mapping[str, DeviceKind] = MappingProxyType({k.name: k for k in (
    MODBUS,
    WXT_SERIAL,
    NTCIP,
    GBT20999,
    PLATE_CAMERA,
    ACCESS_CONTROLLER,
    PARKING,
    OCPP_CHARGER,
)})


def kind(name: str) -> DeviceKind:
    """The descriptor of a kind; KeyError names the known kinds."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown device kind {name!r}; known: {', '.join(KINDS)}") from None
