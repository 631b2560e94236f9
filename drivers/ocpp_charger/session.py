"""One charger's OCPP 1.6J session: the `ocpp` package's ChargePoint with the Central System's handlers.

Every handler turns the request into readings, hands them to the site's store (the agent's event
sink) and answers only when the store says they are committed: a charger that was told its
StartTransaction, StopTransaction or MeterValues was accepted deletes it from its own queue, so the
box must not lose it after answering. If the store refuses or is late, the handler raises
InternalError: the charger gets a CALLERROR and re-sends.

Junk from the network never ends the session: a frame that is not OCPP-J gets a CALLERROR when its
message id can be read (ProtocolError / FormationViolation), a payload the 1.6 schema refuses gets the
schema's code (the `ocpp` package), a value the schema cannot judge (a sampled value that is not a
number, a unit that does not fit its measurand, a connector the charger does not have) gets
TypeConstraintViolation / PropertyConstraintViolation from drivers.ocpp_charger.codec. Every
CALLERROR the box sends is counted by code (OcppChargerDriver.callerrors).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ocpp.exceptions import (
    FormationViolationError,
    InternalError,
    OCPPError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.messages import CallError, MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus

from core.reading import Quality, Reading, RecordClass
from drivers.ocpp_charger import codec

if TYPE_CHECKING:
    from drivers.ocpp_charger.driver import OcppChargerDriver

__all__ = ["Session"]

log = logging.getLogger(__name__)
_ERRORS = {"TypeConstraintViolation": TypeConstraintViolationError,
           "PropertyConstraintViolation": PropertyConstraintViolationError}


class _QuietLogger(logging.LoggerAdapter):
    """The `ocpp` package logs every frame at INFO and every refused request with a traceback at ERROR;
    the driver counts refusals itself, so both go to DEBUG here."""

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)


class Session(ChargePoint):
    def __init__(self, cp_id: str, connection: Any, site: OcppChargerDriver, connectors: int) -> None:
        super().__init__(cp_id, connection, response_timeout=site.settings.command_timeout_s,
                         logger=_QuietLogger(logging.getLogger("drivers.ocpp_charger.wire"), {}))
        self.site = site
        self.connectors = connectors
        self.booted = False
        self.statuses_seen = 0
        self.device = site.name

    # --- framing: never let a frame end the session ---------------------------------------------
    async def route_message(self, raw_msg: Any) -> None:
        self.site.seen(self.id)
        try:
            msg = unpack(raw_msg)
        except OCPPError as exc:
            await self._refuse_frame(raw_msg, exc)
            return
        if msg.message_type_id == MessageType.Call:
            if not (isinstance(msg.unique_id, str) and 0 < len(msg.unique_id) <= 36 and isinstance(msg.action, str)
                    and isinstance(msg.payload, dict)):
                await self._refuse_frame(raw_msg, FormationViolationError(
                    "a CALL is [2, \"<id up to 36 chars>\", \"<Action>\", {payload}]"))
                return
            try:
                await self._handle_call(msg)
            except OCPPError as exc:  # what the package raises before a handler runs (schema, unknown action)
                await self._send(msg.create_call_error(exc).to_json())
            except Exception as exc:
                log.error("%s: %s from %s failed: %r", self.site.name, msg.action, self.id, exc)
                await self._send(msg.create_call_error(InternalError("request could not be handled")).to_json())
        elif msg.message_type_id in (MessageType.CallResult, MessageType.CallError):
            if self._call_lock.locked():  # an answer nobody asked for would sit in the queue for ever
                self._response_queue.put_nowait(msg)
            else:
                self.site.junk(self.id, "unexpected_answer")

    async def _refuse_frame(self, raw: Any, exc: OCPPError) -> None:
        """A frame `unpack` could not read: a CALLERROR if its message id is legible, else only counted."""
        try:
            frame = json.loads(raw)
        except (ValueError, TypeError):
            frame = None
        if isinstance(frame, list) and len(frame) >= 2 and frame[0] == MessageType.Call and isinstance(frame[1], str) \
                and len(frame[1]) <= 36:
            await self._send(CallError(frame[1], exc.code, str(exc.description)[:200], exc.details or {}).to_json())
        else:
            self.site.junk(self.id, exc.code if isinstance(frame, list) else "not_json")

    # --- storing ----------------------------------------------------------------------------------
    def reading(self, point: str, value: float | None, ts: float, *, unit: str = "", cls: RecordClass,
                quality: Quality = Quality.GOOD, text: Any = None) -> Reading:
        return Reading(self.device, f"{self.id}.{point}", value, unit, ts, quality, cls,
                       None if text is None else _compact(text))

    def _connector(self, connector_id: int, *, zero: bool) -> int:
        lo = 0 if zero else 1
        if not lo <= connector_id <= self.connectors:
            raise PropertyConstraintViolationError(
                f"connectorId {connector_id} is not a connector of {self.id} ({lo}..{self.connectors} configured)")
        return connector_id

    @staticmethod
    def _check(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except codec.SampleError as exc:
            raise _ERRORS.get(exc.code, FormationViolationError)(str(exc)) from None

    def _time(self, text: str | None, now: float) -> tuple[float, Quality]:
        """A transaction's timestamp: a garbage one is replaced by ours (flagged), never refused."""
        try:
            return codec.charger_time(codec.parse_timestamp(text), now)
        except codec.SampleError:
            return now, Quality.SUSPECT

    # --- CP -> CS ----------------------------------------------------------------------------------
    @on(Action.boot_notification)
    async def on_boot(self, charge_point_vendor: str, charge_point_model: str, **info: Any) -> Any:
        now = self.site.clock()
        await self.site.store([self.reading("boot", 1.0, now, cls=RecordClass.EVENT, text={
            "vendor": charge_point_vendor, "model": charge_point_model, **info})])
        self.booted = True
        return call_result.BootNotification(current_time=codec.format_time(now),
                                            interval=self.site.settings.heartbeat_s, status=RegistrationStatus.accepted)

    @on(Action.heartbeat)
    async def on_heartbeat(self) -> Any:
        return call_result.Heartbeat(current_time=codec.format_time(self.site.clock()))

    @on(Action.status_notification)
    async def on_status(self, connector_id: int, error_code: str, status: str, timestamp: str | None = None,
                        info: str | None = None, vendor_id: str | None = None,
                        vendor_error_code: str | None = None) -> Any:
        c = self._connector(connector_id, zero=True)
        now = self.site.clock()
        ts, quality = (now, Quality.GOOD) if timestamp is None else self._time(timestamp, now)
        cls = RecordClass.ALARM if status == "Faulted" else RecordClass.EVENT
        text = {k: v for k, v in (("status", status), ("error_code", error_code), ("info", info),
                                  ("vendor_id", vendor_id), ("vendor_error_code", vendor_error_code)) if v is not None}
        await self.site.store([
            self.reading(f"c{c}.status", float(codec.STATUSES.index(status)), ts, cls=cls, quality=quality, text=text),
            self.reading(f"c{c}.error", float(codec.ERROR_CODES.index(error_code)), ts, cls=cls, quality=quality,
                         text=text)])
        self.statuses_seen += 1
        self.site.connector_status(self.id, c, status, error_code, ts)
        return call_result.StatusNotification()

    def _meter_readings(self, connector: int, meter_value: list[Any], tx: int | None, *, strict: bool,
                        now: float) -> tuple[list[Reading], int]:
        """Readings of meterValue entries; strict: a bad one refuses all, else it is skipped and counted."""
        out, bad = [], 0
        for i, mv in enumerate(meter_value):
            try:
                ts, q, samples = codec.decode_meter_value(mv, now, f"meterValue[{i}]")
            except codec.SampleError:
                if strict:
                    raise
                bad += 1
                continue
            for s in samples:
                extra = {k: v for k, v in (("tx", tx), ("context", s.context)) if v not in (None, "Sample.Periodic")}
                out.append(self.reading(f"c{connector}.{s.point}", s.value, ts, unit=s.unit, cls=RecordClass.ROUTINE,
                                        quality=q | s.quality, text=extra or None))
        return out, bad

    @on(Action.meter_values)
    async def on_meter_values(self, connector_id: int, meter_value: list[Any],
                              transaction_id: int | None = None) -> Any:
        c = self._connector(connector_id, zero=True)
        readings, _ = self._check(lambda: self._meter_readings(c, meter_value, transaction_id, strict=True,
                                                               now=self.site.clock()))
        await self.site.store(readings)
        return call_result.MeterValues()

    @on(Action.authorize)
    async def on_authorize(self, id_tag: str) -> Any:
        status = self.site.authorize(id_tag)
        await self.site.store([self.reading("authorize", 1.0 if status == AuthorizationStatus.accepted else 0.0,
                                            self.site.clock(), cls=RecordClass.EVENT,
                                            text={"id_tag": id_tag, "status": status.value})])
        return call_result.Authorize(id_tag_info=IdTagInfo(status=status))

    @on(Action.start_transaction)
    async def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                       reservation_id: int | None = None) -> Any:
        c = self._connector(connector_id, zero=False)
        now = self.site.clock()
        status = self.site.authorize(id_tag)  # offline-authorised starts arrive late: checked again here
        t = await self.site.transactions.start(self.id, c, id_tag, meter_start, timestamp)
        if not t.recorded:
            ts, quality = self._time(timestamp, now)
            await self.site.store([self.reading(
                "tx_start", float(meter_start), ts, unit="Wh", cls=RecordClass.EVENT,
                quality=quality | (Quality.OUT_OF_RANGE if meter_start < 0 else Quality.GOOD),
                text={"tx": t.tx, "connector": c, "id_tag": id_tag, "id_tag_status": status.value,
                      "charger_ts": timestamp,
                      **({} if reservation_id is None else {"reservation_id": reservation_id})})])
            t.recorded = True
        return call_result.StartTransaction(transaction_id=t.tx, id_tag_info=IdTagInfo(status=status))

    @on(Action.stop_transaction)
    async def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, reason: str | None = None,
                      id_tag: str | None = None, transaction_data: list[Any] | None = None) -> Any:
        status = self.site.authorize(id_tag) if id_tag is not None else None
        answer = call_result.StopTransaction(id_tag_info=None if status is None else IdTagInfo(status=status))
        txs = self.site.transactions
        if txs.was_closed(transaction_id):  # a re-send of a stop we stored: same answer, no second record
            return answer
        now = self.site.clock()
        start = txs.open.get(transaction_id)
        connector = start.connector if start is not None else 0
        data, bad = self._meter_readings(connector, transaction_data or [], transaction_id, strict=False, now=now)
        if bad:
            self.site.junk(self.id, "transaction_data")
        ts, quality = self._time(timestamp, now)
        text: dict[str, Any] = {"tx": transaction_id, "reason": reason or "Local", "id_tag": id_tag,
                                "charger_ts": timestamp}
        if start is None:
            text["unknown_tx"] = True  # not issued by this box, or its state was lost
        else:
            text |= {"connector": start.connector, "start_id_tag": start.id_tag, "meter_start": start.meter_start,
                     "energy_wh": meter_stop - start.meter_start}
            if meter_stop < start.meter_start:
                quality |= Quality.OUT_OF_RANGE  # a register that went backwards: kept, flagged, not rebased
        if bad:
            text["bad_samples"] = bad
        await self.site.store(data + [self.reading("tx_stop", float(meter_stop), ts, unit="Wh",
                                                   cls=RecordClass.EVENT, quality=quality, text=text)])
        await txs.stop(transaction_id, meter_stop)
        return answer

    @on(Action.data_transfer)
    async def on_data_transfer(self, vendor_id: str, message_id: str | None = None, data: str | None = None) -> Any:
        return call_result.DataTransfer(status=DataTransferStatus.rejected)

    @on(Action.diagnostics_status_notification)
    async def on_diagnostics_status(self, status: str) -> Any:
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    async def on_firmware_status(self, status: str) -> Any:
        await self.site.store([self.reading("firmware_status", 1.0, self.site.clock(), cls=RecordClass.EVENT,
                                            text={"status": status})])
        return call_result.FirmwareStatusNotification()

