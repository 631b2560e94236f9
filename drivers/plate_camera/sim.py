"""A Vzenith-style plate camera: pushes plate results over HTTP, keeps offline records, heartbeats.

Behaviour, as the vendor's HTTP push document describes it:
- each recognised plate is POSTed as {"AlarmInfoPlate": ...} with a fresh plateid; a reply with
  Response_AlarmInfoPlate.info == "ok" opens the barrier;
- if the push fails (no server, timeout, non-200, unreadable reply) the record is kept offline (at
  most 9000; the oldest is dropped beyond that) and later re-sent with isoffline=1, one at a time:
  the next is sent only after the reply carried ContinuePushOffline {plateid, continue: 1};
- a record whose acknowledgement was lost is sent again: the server sees duplicates. `lose_replies`
  makes the next n replies get lost after the server has processed them, to reproduce that;
- heartbeats are multipart/form-data POSTs every `heartbeat_s` (a task this object owns).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx

__all__ = ["PlateCameraSim", "PlateRecord"]


@dataclass(frozen=True, slots=True)
class PlateRecord:
    plate_id: int
    plate: str
    confidence: int
    sec: int


class PlateCameraSim:
    def __init__(self, push_url: str, *, serialno: str = "fe71e106-57263272", heartbeat_url: str | None = None,
                 heartbeat_s: float = 5.0, timeout_s: float = 1.0, offline_capacity: int = 9000,
                 clock: Callable[[], float] = time.time, first_plate_id: int = 21085) -> None:
        self.push_url = push_url
        self.heartbeat_url = heartbeat_url or push_url
        self.serialno = serialno
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.offline: deque[PlateRecord] = deque(maxlen=offline_capacity)
        self.opened: list[str] = []
        self.sent = 0
        self.lose_replies = 0
        self._next_id = first_plate_id
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.heartbeats_sent = 0

    async def start_heartbeats(self) -> None:
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(), name=f"camera-heartbeat-{self.serialno}")

    async def close(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        await self._client.aclose()

    async def __aenter__(self) -> PlateCameraSim:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _body(self, rec: PlateRecord, offline: bool) -> dict:
        lt = time.localtime(rec.sec)
        return {"AlarmInfoPlate": {
            "channel": 0, "deviceName": "IVS", "ipaddr": "192.168.1.100", "serialno": self.serialno,
            "result": {"PlateResult": {
                "license": rec.plate, "confidence": rec.confidence, "plateid": rec.plate_id,
                "isoffline": 1 if offline else 0, "colorType": 1, "type": 1, "triggerType": 4,
                "gioouts": [{"ionum": 0, "ctrltype": 0}],
                "timeStamp": {"Timeval": {"sec": rec.sec, "usec": 0, "decyear": lt.tm_year, "decmon": lt.tm_mon,
                                          "decday": lt.tm_mday, "dechour": lt.tm_hour, "decmin": lt.tm_min,
                                          "decsec": lt.tm_sec}},
            }}}}

    async def _post(self, rec: PlateRecord, offline: bool) -> dict | None:
        """The Response_AlarmInfoPlate object, or None when the push failed."""
        self.sent += 1
        try:
            resp = await self._client.post(self.push_url, json=self._body(rec, offline))
        except httpx.HTTPError:
            return None
        if self.lose_replies > 0:
            self.lose_replies -= 1
            return None
        if resp.status_code != 200:
            return None
        try:
            reply = json.loads(resp.content)["Response_AlarmInfoPlate"]
        except (ValueError, KeyError, TypeError):
            return None
        return reply if isinstance(reply, dict) else None

    async def recognise(self, plate: str, confidence: int = 96) -> bool | None:
        """A car at the camera. True: barrier opened; False: refused; None: stored offline."""
        rec = PlateRecord(self._next_id, plate, confidence, int(self.clock()))
        self._next_id += 1
        reply = await self._post(rec, offline=False)
        if reply is None or reply.get("plateid") != rec.plate_id:
            self.offline.append(rec)
            return None
        if reply.get("info") == "ok":
            self.opened.append(plate)
            return True
        return False

    async def push_offline(self) -> int:
        """Re-send offline records in order until one is not acknowledged. Returns how many were."""
        done = 0
        while self.offline:
            rec = self.offline[0]
            reply = await self._post(rec, offline=True)
            ack = (reply or {}).get("ContinuePushOffline")
            if not isinstance(ack, dict) or ack.get("plateid") != rec.plate_id:
                return done
            self.offline.popleft()
            done += 1
            if ack.get("continue") != 1:
                return done
        return done

    async def heartbeat(self) -> bool:
        fields = {"device_name": "IVS", "ipaddr": "192.168.1.100", "port": "80", "user_name": "admin",
                  "pass_wd": "admin", "serialno": self.serialno, "channel_num": "1"}
        try:
            resp = await self._client.post(self.heartbeat_url, files={k: (None, v) for k, v in fields.items()})
        except httpx.HTTPError:
            return False
        self.heartbeats_sent += 1
        return resp.status_code == 200

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.heartbeat()
            await asyncio.sleep(self.heartbeat_s)
