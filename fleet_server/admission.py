"""`AdmissionService`: enrolment, re-key, admitted requests and revocation, store and broker together.

Order, chosen so that no box ends up with an HTTP credential the broker refuses, nor the reverse:
1. ask the store where the request goes (token checked, nothing changed);
2. for an accepted box, create/rotate its broker account FIRST (a fresh MQTT password);
   a broker that does not confirm -> `BrokerUnavailable` (503, Retry-After): nothing was stored,
   no token use spent, the installer simply retries;
3. commit in the store (credential, token use) and answer with both secrets, once.
If 3 fails after 2, the box holds nothing new and retries; the orphan account is reset by the retry.
Revocation goes the other way: the HTTP credential dies first (store), then the broker account is
deleted, which disconnects the box at once; a broker that does not confirm -> 503 with the HTTP
side already dead, and the idempotent revoke is retried.
One asyncio lock per box id serialises 2-3 within this process (two installers racing on one id).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fleet_server.broker.accounts import BrokerAccounts
from fleet_server.broker.acl import box_client_id
from fleet_server.errors import AdmissionRequired, EnrollmentRefused
from fleet_server.settings import ServerSettings
from fleet_server.store.admission import Application
from fleet_server.store.base import Store, new_secret

__all__ = ["AdmissionService", "Enrolled", "Pending"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Enrolled:
    box_id: str
    credential: str
    mqtt: dict[str, Any] | None   # username, password, client_id, host, port, tls; None: no broker accounts


@dataclass(frozen=True, slots=True)
class Pending:
    request: str                  # the secret to poll with


class AdmissionService:
    def __init__(self, store: Store, accounts: BrokerAccounts | None, settings: ServerSettings) -> None:
        self.store = store
        self.accounts = accounts
        self.settings = settings
        self._locks: dict[str, asyncio.Lock] = {}

    async def enroll(self, token: str | None, app: Application, credential: str | None) -> Enrolled | Pending:
        async with self._lock(app.box_id):
            route = await asyncio.to_thread(self.store.enroll_route, token, app.box_id, credential)
            if route == "accept":
                password = await self._set_account(app.box_id)
                try:
                    new = await asyncio.to_thread(
                        self.store.enroll, token, app.box_id, app.hardware, app.site, app.agent_version,
                        list(app.tags), credential=credential)
                except AdmissionRequired:
                    pass  # the id appeared meanwhile (another server process): fall through to pending
                else:
                    return Enrolled(app.box_id, new, self._mqtt(app.box_id, password))
        if token is None:  # only after a lost race on a re-key: the credential shown was rotated meanwhile
            raise EnrollmentRefused("unknown_token", "enrollment token is not known to this server")
        return Pending(await asyncio.to_thread(self.store.request_admission, token, app))

    async def poll(self, request: str) -> Enrolled | None:
        """None while pending; the credentials once accepted; EnrollmentRefused otherwise."""
        state, box_id = await asyncio.to_thread(self.store.admission_state, request)
        if state == "pending":
            return None
        async with self._lock(box_id):
            await asyncio.to_thread(self.store.admission_state, request)  # still unclaimed (raises if not)
            password = await self._set_account(box_id)
            box_id, credential = await asyncio.to_thread(self.store.claim_admission, request)
        return Enrolled(box_id, credential, self._mqtt(box_id, password))

    async def revoke(self, box_id: str) -> bool:
        """Kill the box's HTTP credential, then its broker account; True when a broker account was deleted."""
        async with self._lock(box_id):
            await asyncio.to_thread(self.store.revoke_box, box_id)
            log.info("box %s revoked: HTTP credential dead", box_id)
            if self.accounts is None:
                return False
            await self.accounts.delete_box(box_id)
            log.info("box %s revoked: broker account deleted (disconnected)", box_id)
            return True

    async def _set_account(self, box_id: str) -> str | None:
        if self.accounts is None:
            return None
        password = new_secret()
        await self.accounts.set_box(box_id, password)
        return password

    def _mqtt(self, box_id: str, password: str | None) -> dict[str, Any] | None:
        if password is None:
            return None
        s = self.settings
        return {"username": box_id, "password": password, "client_id": box_client_id(box_id),
                "host": s.mqtt_public_host, "port": s.mqtt_public_port, "tls": s.mqtt_public_tls,
                "topic_prefix": s.topic_prefix}

    def _lock(self, box_id: str) -> asyncio.Lock:
        if len(self._locks) > 1024:  # drop idle locks so attacker-chosen ids cannot grow this
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(box_id, asyncio.Lock())
