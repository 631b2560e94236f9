"""The device-kind seam: one descriptor per kind, registered in drivers/registry.py.

A kind lives in its own folder, `drivers/<kind>/`, Home Assistant style:

    drivers/<kind>/__init__.py   KIND = DeviceKind(...)  (imports the settings only: loading a config
                                 never pays for pysnmp, httpx or the ocpp package)
    drivers/<kind>/settings.py   ONE frozen settings class and its parser: the config's rules and the
                                 driver's are the same object, so they cannot drift
    drivers/<kind>/driver.py     the Driver (drivers.base), built from those settings
    drivers/<kind>/codec.py      frames <-> values, pure functions (property-tested)
    drivers/<kind>/sim.py        a simulator on the real transport
    drivers/<kind>/sim_cli.py    its `quanedge sim <kind>` command (options only; imports sim.py when run)
    drivers/<kind>/identify.py   what `quanedge agent scan` asks to recognise the device (if it can)

Adding a kind touches its folder and one line of drivers/registry.py. The agent never looks at
a kind's name: the descriptor says what the box needs to know (its commands, whether it listens
for pushes, the serial port or TCP listen address it owns, the line it is polled on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from core.config_reader import Table
    from core.reading import Reading
    from drivers.base import Driver

__all__ = ["DeviceKind", "DeviceSettings", "ParseContext", "BuildContext", "EventCallback"]

EventCallback = Callable[["Reading"], Any]


class DeviceSettings(Protocol):
    """What every kind's settings carry (the [[device]] keys all kinds share)."""

    kind: ClassVar[str]

    # read-only: the settings classes are frozen dataclasses
    @property
    def name(self) -> str: ...
    @property
    def poll_s(self) -> float: ...
    @property
    def points(self) -> tuple[str, ...]: ...
    @property
    def allow_commands(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ParseContext:
    """What a parser may look at beyond its own table: the config file's folder (relative paths)
    and the [[bus]] sections by name (a kind on a shared bus checks its `bus` key against them)."""

    base_dir: Path
    buses: Mapping[str, Any] = field(default_factory=dict)


class BuildContext(Protocol):
    """What the box hands a kind's `build`: shared links, event sinks, refusal counters, the data directory."""

    def link(self, bus: str) -> Any:
        """The one link object of a [[bus]] (shared by every slave on it)."""

    def events(self, device: str, *, drop_when_full: bool = False) -> EventCallback:
        """The callback a push driver hands its readings to; returns a future done once stored."""

    def refusals(self, device: str) -> Callable[[str], None] | None:
        """The counter for a receiver's refused pushes (by reason), or None."""

    @property
    def data_dir(self) -> Path | None:
        """The box's data directory ([box] data_dir), where a driver keeps what must survive a
        restart (a gate's allow-list: `<data_dir>/allowlists/<device>.json`); None: nothing is kept."""


def _never(settings: Any) -> bool:
    return False


def _nothing(settings: Any) -> None:
    return None


def _listed_points(settings: Any) -> frozenset[str] | None:
    return frozenset(settings.points) or None


def _own_line(settings: Any) -> str:
    return f"{settings.kind}:{settings.name}"


@dataclass(frozen=True)
class SignalPlan:
    """How a signal controller kind reports and takes its running timing plan (agent.traffic_control)."""

    point: str     # the point that reports the running plan
    command: str   # the command that selects a plan
    argument: str  # the command's argument naming the plan number


@dataclass(frozen=True)
class DeviceKind:
    """One device kind, as the box, the config loader and the CLI see it.

    `parse(table, ctx)` validates one [[device]] table into the kind's frozen settings; every error
    names the file, key, value and what was expected (core.config_reader.Table does the wording).
    The parser reads every key of its table (the loader has read `kind`); the loader then rejects
    any key nobody read, so a typo is an error, not a silent default.

    `build(settings, ctx)` returns the Driver; it imports the driver module itself, lazily.
    """

    name: str
    summary: str
    parse: Callable[[Table, ParseContext], DeviceSettings]
    build: Callable[[Any, BuildContext], Driver]
    commands: tuple[str, ...] = ()
    #: a push device: a Listener task owns open()/close() instead of the poller
    listens: Callable[[Any], bool] = _never
    #: the line the device is polled on; devices on one line share one lock and one scheduler
    line: Callable[[Any], str] = _own_line
    #: the poller opens the driver on first use and reopens it after a LinkError (False: the link
    #: is shared and reconnects by itself, as a Modbus [[bus]])
    owns_open: bool = True
    #: the serial port this device owns alone (config refuses two owners of one port)
    serial_port: Callable[[Any], str | None] = _nothing
    #: the (host, port) this device listens on (config refuses two listeners on one port)
    listen_address: Callable[[Any], tuple[str, int] | None] = _nothing
    #: the point names the device will report (alarm rules are checked against them); None: not known
    #: before it runs (then only an explicit `points` list makes them known)
    point_names: Callable[[Any], frozenset[str] | None] = _listed_points
    #: `quanedge sim <name>` commands: loads {command name: typer command function} (sim_cli.py, light;
    #: the simulator itself is imported when a command runs)
    simulators: Callable[[], Mapping[str, Callable[..., None]]] | None = None
    #: a signal controller: how its timing plan is read and set, for [[junction]] pattern control
    signal_plan: SignalPlan | None = None
    #: why the box cannot update this kind's firmware: the updater refuses a firmware rollout for a
    #: device of this kind with it (reason_code "firmware_not_supported"; docs/device-firmware.md)
    firmware_refusal: str = ("no firmware update procedure for this kind is documented "
                             "(shared/reference/devices.md), so none is implemented")
