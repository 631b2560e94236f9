"""Simulated OCPP 1.6J charge points: the `ocpp` package as a client, over websockets to the box.

Each `ChargerSim` behaves as the spec describes a charger (OCPP 1.6 Ed. 2, chapters 4 and 5):
- connect: websocket to <url>/<charge point id> with subprotocol ocpp1.6 (HTTP Basic when it has a
  secret), BootNotification, then a StatusNotification per connector (0 = the charger itself) and a
  Heartbeat every `interval` the box answered;
- plug / start / stop / fault: Preparing, Authorize + StartTransaction + Charging and MeterValues
  every `meter_s` (energy register, power, current, voltage, SoC), StopTransaction + Finishing +
  Available, Faulted with an error code;
- answers RemoteStart/RemoteStopTransaction, ChangeAvailability (Scheduled while charging), Reset,
  UnlockConnector and TriggerMessage(StatusNotification); a connector made Inoperative rejects a
  remote start.
It does not queue transaction messages while disconnected (a real charger does): an action while
disconnected fails.

Its `quanedge sim ocpp-charger` command is in drivers/ocpp_charger/sim_cli.py.
"""

from __future__ import annotations

import asyncio
import base64
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

__all__ = ["ChargerSim"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Connector:
    status: str = "Available"
    error_code: str = "NoError"
    operative: bool = True
    tx: int | None = None
    id_tag: str | None = None
    energy_wh: float = 0.0
    power_w: float = 0.0
    soc: float = 20.0
    meter_task: asyncio.Task | None = None


class _Client(ChargePoint):
    """The CS -> CP requests the simulated charger answers."""

    sim: ChargerSim

    @on(Action.remote_start_transaction)
    async def on_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any) -> Any:
        c = self.sim.connectors.get(connector_id or 1)
        ok = c is not None and c.operative and c.tx is None and c.status in ("Available", "Preparing")
        return call_result.RemoteStartTransaction(status="Accepted" if ok else "Rejected")

    @after(Action.remote_start_transaction)
    async def after_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any) -> None:
        c = self.sim.connectors.get(connector_id or 1)
        if c is not None and c.operative and c.tx is None:
            await self.sim.start(connector_id or 1, id_tag)

    @on(Action.remote_stop_transaction)
    async def on_remote_stop(self, transaction_id: int) -> Any:
        known = any(c.tx == transaction_id for c in self.sim.connectors.values())
        return call_result.RemoteStopTransaction(status="Accepted" if known else "Rejected")

    @after(Action.remote_stop_transaction)
    async def after_remote_stop(self, transaction_id: int) -> None:
        for n, c in self.sim.connectors.items():
            if c.tx == transaction_id:
                await self.sim.stop(n, reason="Remote")

    @on(Action.change_availability)
    async def on_change_availability(self, connector_id: int, type: str) -> Any:
        targets = list(self.sim.connectors) if connector_id == 0 else [connector_id]
        if any(n not in self.sim.connectors for n in targets):
            return call_result.ChangeAvailability(status="Rejected")
        busy = any(self.sim.connectors[n].tx is not None for n in targets)
        return call_result.ChangeAvailability(status="Scheduled" if busy else "Accepted")

    @after(Action.change_availability)
    async def after_change_availability(self, connector_id: int, type: str) -> None:
        for n in list(self.sim.connectors) if connector_id == 0 else [connector_id]:
            c = self.sim.connectors.get(n)
            if c is not None and c.tx is None:
                c.operative = type == "Operative"
                await self.sim.set_status(n, "Available" if c.operative else "Unavailable")

    @on(Action.reset)
    async def on_reset(self, type: str) -> Any:
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    async def after_reset(self, type: str) -> None:
        for n, c in self.sim.connectors.items():
            if c.tx is not None:
                await self.sim.stop(n, reason="SoftReset" if type == "Soft" else "HardReset")
        await self.sim.boot()

    @on(Action.unlock_connector)
    async def on_unlock(self, connector_id: int) -> Any:
        c = self.sim.connectors.get(connector_id)
        return call_result.UnlockConnector(
            status="Unlocked" if c is not None and c.status != "Faulted" else "UnlockFailed")

    @on(Action.trigger_message)
    async def on_trigger(self, requested_message: str, connector_id: int | None = None) -> Any:
        ok = requested_message in ("StatusNotification", "Heartbeat")
        return call_result.TriggerMessage(status="Accepted" if ok else "NotImplemented")

    @after(Action.trigger_message)
    async def after_trigger(self, requested_message: str, connector_id: int | None = None) -> None:
        self.sim.triggered += 1
        if requested_message == "StatusNotification":
            await self.sim.send_statuses()
        elif requested_message == "Heartbeat":
            await self.call(call.Heartbeat())


class ChargerSim:
    def __init__(self, url: str, cp_id: str, *, secret: str | None = None, connectors: int = 2,
                 meter_s: float = 10.0, power_w: float = 11_000.0, seed: int = 0) -> None:
        self.url = url.rstrip("/")
        self.cp_id = cp_id
        self.secret = secret
        self.meter_s = meter_s
        self.power_w = power_w
        self.connectors = {n: Connector() for n in range(1, connectors + 1)}
        self.interval = 300
        self.triggered = 0
        self.answers: list[tuple[str, Any]] = []  # (action, answer) of what it sent, newest last
        self._rng = random.Random(seed)
        self._ws: ClientConnection | None = None
        self._client: _Client | None = None
        self._tasks: list[asyncio.Task] = []

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def connect(self, *, boot: bool = True) -> None:
        headers = {}
        if self.secret is not None:
            token = base64.b64encode(f"{self.cp_id}:{self.secret}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self._ws = await connect(f"{self.url}/{self.cp_id}", subprotocols=[Subprotocol("ocpp1.6")],
                                 additional_headers=headers, open_timeout=5)
        self._client = _Client(self.cp_id, self._ws, response_timeout=10)
        self._client.sim = self
        self._tasks = [asyncio.create_task(self._serve(), name=f"sim-{self.cp_id}")]
        if boot:
            await self.boot()
        self._tasks.append(asyncio.create_task(self._heartbeats(), name=f"sim-heartbeat-{self.cp_id}"))

    async def _serve(self) -> None:
        try:
            await self._client.start()  # type: ignore[union-attr]
        except Exception:
            self._ws = None

    async def disconnect(self) -> None:
        for c in self.connectors.values():
            if c.meter_task is not None:
                c.meter_task.cancel()
                c.meter_task = None
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def send(self, payload: Any) -> Any:
        if self._client is None or self._ws is None:
            raise ValueError(f"charger {self.cp_id} is not connected")
        answer = await self._client.call(payload, suppress=False)
        self.answers.append((type(payload).__name__, answer))
        return answer

    async def boot(self) -> None:
        answer = await self.send(call.BootNotification(charge_point_vendor="Quanedge", charge_point_model="SimAC22",
                                                       charge_point_serial_number=f"SIM-{self.cp_id}",
                                                       firmware_version="1.0.0"))
        self.interval = answer.interval
        await self.send_statuses()

    async def send_statuses(self) -> None:
        await self.send(call.StatusNotification(connector_id=0, error_code="NoError", status="Available",
                                                timestamp=_now()))
        for n, c in self.connectors.items():
            await self.set_status(n, c.status, c.error_code)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.send(call.Heartbeat())

    async def set_status(self, n: int, status: str, error_code: str = "NoError") -> None:
        c = self.connectors[n]
        c.status, c.error_code = status, error_code
        await self.send(call.StatusNotification(connector_id=n, error_code=error_code, status=status,
                                                timestamp=_now()))

    def _connector(self, n: int) -> Connector:
        if n not in self.connectors:
            raise ValueError(f"charger {self.cp_id} has connectors 1..{len(self.connectors)}, not {n}")
        return self.connectors[n]

    async def plug(self, n: int) -> None:
        self._connector(n)
        await self.set_status(n, "Preparing")

    async def start(self, n: int, id_tag: str) -> int | None:
        """Authorize and start a transaction; its id, or None when the box refused the idTag."""
        c = self._connector(n)
        if c.tx is not None:
            raise ValueError(f"connector {n} is already charging (transaction {c.tx})")
        auth = await self.send(call.Authorize(id_tag=id_tag))
        if auth.id_tag_info["status"] != "Accepted":
            return None
        answer = await self.send(call.StartTransaction(connector_id=n, id_tag=id_tag, meter_start=int(c.energy_wh),
                                                       timestamp=_now()))
        if answer.id_tag_info["status"] != "Accepted":
            return None
        c.tx, c.id_tag, c.power_w = answer.transaction_id, id_tag, self.power_w
        await self.set_status(n, "Charging")
        if self.meter_s > 0:
            c.meter_task = asyncio.create_task(self._meter(n), name=f"sim-meter-{self.cp_id}-{n}")
        return c.tx

    async def meter(self, n: int) -> None:
        c = self._connector(n)
        c.energy_wh += c.power_w * self.meter_s / 3600
        c.soc = min(100.0, c.soc + c.power_w * self.meter_s / 3600 / 600)
        amps = c.power_w / 3 / 230
        await self.send(call.MeterValues(connector_id=n, transaction_id=c.tx, meter_value=[{
            "timestamp": _now(), "sampledValue": [
                {"value": str(int(c.energy_wh)), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": f"{c.power_w / 1000:.3f}", "measurand": "Power.Active.Import", "unit": "kW"},
                {"value": f"{amps * self._rng.uniform(0.98, 1.02):.2f}", "measurand": "Current.Import",
                 "phase": "L1", "unit": "A"},
                {"value": f"{self._rng.uniform(226, 234):.1f}", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
                {"value": f"{c.soc:.0f}", "measurand": "SoC", "location": "EV", "unit": "Percent"}]}]))

    async def _meter(self, n: int) -> None:
        while True:
            await asyncio.sleep(self.meter_s)
            await self.meter(n)

    async def stop(self, n: int, reason: str = "Local") -> int:
        c = self._connector(n)
        if c.tx is None:
            raise ValueError(f"connector {n} has no transaction")
        if c.meter_task is not None and c.meter_task is not asyncio.current_task():
            c.meter_task.cancel()
        c.meter_task = None
        tx, c.tx, c.power_w = c.tx, None, 0.0
        await self.send(call.StopTransaction(meter_stop=int(c.energy_wh), timestamp=_now(), transaction_id=tx,
                                             reason=reason, id_tag=c.id_tag))
        await self.set_status(n, "Finishing")
        await self.set_status(n, "Available")
        return tx

    async def fault(self, n: int, error_code: str = "GroundFailure") -> None:
        c = self._connector(n)
        if error_code == "NoError":
            await self.set_status(n, "Available" if c.operative else "Unavailable")
        else:
            await self.set_status(n, "Faulted", error_code)

    def status(self) -> dict[str, Any]:
        return {"charger": self.cp_id, "connected": self.connected, "triggered": self.triggered, "connectors": {
            n: {"status": c.status, "error_code": c.error_code, "tx": c.tx, "energy_wh": int(c.energy_wh)}
            for n, c in self.connectors.items()}}
