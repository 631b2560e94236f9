"""The remote commands of an ocpp_charger device: agent arguments -> an OCPP 1.6 CALL, and its answer.

    remote_start         charger, id_tag, [connector]        RemoteStartTransaction
    remote_stop          [charger], transaction_id           RemoteStopTransaction (charger: from the open tx)
    change_availability  charger, connector (0 = all), availability = operative | inoperative
    reset                charger, type = soft | hard
    unlock_connector     charger, connector

`charger` may be left out when the site has one charger. Arguments are checked before anything is
sent (CommandRefused naming the argument); a charger's Rejected / UnlockFailed / NotSupported is a
CommandRefused carrying its answer. A remote start for an idTag this box would not authorize is
refused here: the charger's StartTransaction would get Invalid anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ocpp.v16 import call
from ocpp.v16.enums import AuthorizationStatus, AvailabilityType, ResetType

from core.errors import CommandRefused

if TYPE_CHECKING:
    from drivers.ocpp_charger.driver import OcppChargerDriver

__all__ = ["build_call", "check_answer", "ARGS"]

ARGS = {
    "remote_start": {"charger", "id_tag", "connector"},
    "remote_stop": {"charger", "transaction_id"},
    "change_availability": {"charger", "connector", "availability"},
    "reset": {"charger", "type"},
    "unlock_connector": {"charger", "connector"},
}
_ACCEPTED = {"remote_start": {"Accepted"}, "remote_stop": {"Accepted"}, "reset": {"Accepted"},
             "change_availability": {"Accepted", "Scheduled"}, "unlock_connector": {"Unlocked"}}


def _int(name: str, command: str, args: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = args.get(key)
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise CommandRefused(f"{name}: {command} needs {key!r} as an integer {lo}..{hi}, got {v!r}")
    return v


def _choice(name: str, command: str, args: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    v = args.get(key)
    if not isinstance(v, str) or v.lower() not in choices:
        raise CommandRefused(f"{name}: {command} needs {key!r} as one of {', '.join(choices)}, got {v!r}")
    return v.lower()


def build_call(site: OcppChargerDriver, command: str, args: dict[str, Any], *, id_tag_max: int,
               tx_max: int) -> tuple[str, Any]:
    """(charge point id, the CALL payload) for a command, or CommandRefused naming the bad argument."""
    name = site.name
    unknown = sorted(set(args) - ARGS[command])
    if unknown:
        raise CommandRefused(f"{name}: {command} takes {', '.join(sorted(ARGS[command]))}; "
                             f"unknown: {', '.join(unknown)}")
    tx = _int(name, command, args, "transaction_id", 1, tx_max) if command == "remote_stop" else None
    cp_id = args.get("charger")
    if cp_id is None and tx is not None and tx in site.transactions.open:
        cp_id = site.transactions.open[tx].charger
    if cp_id is None and len(site.settings.chargers) == 1:
        cp_id = site.settings.chargers[0].id
    charger = site.settings.charger(cp_id) if isinstance(cp_id, str) else None
    if charger is None or not isinstance(cp_id, str):
        known = ", ".join(c.id for c in site.settings.chargers)
        raise CommandRefused(f"{name}: {command} needs 'charger' naming a configured charger ({known}), got {cp_id!r}")
    n = charger.connectors
    if command == "remote_start":
        id_tag = args.get("id_tag")
        if not isinstance(id_tag, str) or not 0 < len(id_tag) <= id_tag_max or not id_tag.isascii() \
                or not id_tag.isprintable():
            raise CommandRefused(f"{name}: remote_start needs 'id_tag' as 1-{id_tag_max} printable ASCII characters, "
                                 f"got {id_tag!r}")
        if site.authorize(id_tag) != AuthorizationStatus.accepted:
            raise CommandRefused(f"{name}: id_tag {id_tag!r} is not allowed to charge here (id_tags); the charger's "
                                 "StartTransaction would be refused")
        connector = _int(name, command, args, "connector", 1, n) if "connector" in args else None
        return cp_id, call.RemoteStartTransaction(id_tag=id_tag, connector_id=connector)
    if command == "remote_stop":
        return cp_id, call.RemoteStopTransaction(transaction_id=tx)
    if command == "change_availability":
        kind = _choice(name, command, args, "availability", ("operative", "inoperative"))
        return cp_id, call.ChangeAvailability(connector_id=_int(name, command, args, "connector", 0, n),
                                              type=AvailabilityType(kind.capitalize()))
    if command == "reset":
        return cp_id, call.Reset(type=ResetType(_choice(name, command, args, "type", ("soft", "hard")).capitalize()))
    return cp_id, call.UnlockConnector(connector_id=_int(name, command, args, "connector", 1, n))


def check_answer(name: str, cp_id: str, command: str, answer: Any) -> None:
    status = getattr(answer, "status", None)
    text = getattr(status, "value", status)
    if text not in _ACCEPTED[command]:
        raise CommandRefused(f"{name}: charger {cp_id!r} answered {command} with {text!r}")
