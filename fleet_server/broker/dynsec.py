"""`DynsecClient`: run dynamic-security commands on mosquitto over its $CONTROL topic.

One short-lived admin connection per exchange: publish {"commands": [...]} to
`$CONTROL/dynamic-security/v1`, wait for the matching {"responses": [...]} on `.../response`
(matched by correlationData). Enrolment and revocation are rare, so a connection per call costs
nothing worth a long-lived session, and it cannot go stale. aiomqtt errors and timeouts become
`BrokerUnavailable` here and nowhere else; a command the plugin refuses becomes `BrokerRefused`
unless the caller said that error is fine (e.g. "Client not found" when deleting).
Passwords travel inside the commands: this module never logs a command's arguments.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Collection, Sequence
from typing import Any

import aiomqtt

from fleet_server.errors import BrokerRefused, BrokerUnavailable

__all__ = ["CONTROL_TOPIC", "RESPONSE_TOPIC", "DynsecClient"]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
# CONNACK codes for a refused login: 3.1.1 bad user/password, not authorised; 5.0 the same.
_AUTH_REFUSED = {4, 5, 0x86, 0x87}


def _code(rc: Any) -> int:
    return int(getattr(rc, "value", rc)) if rc is not None else -1


class DynsecClient:
    def __init__(
        self, host: str, port: int, username: str, password: str, *,
        tls_params: aiomqtt.TLSParameters | None = None, timeout_s: float = 5.0,
    ) -> None:
        if not username or not password:
            raise ValueError("the broker admin account needs a username and a password")
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._username, self._password, self._tls = username, password, tls_params

    async def run(self, commands: Sequence[dict[str, Any]], *, ok_errors: Collection[str] = ()) -> list[dict[str, Any]]:
        """Run `commands` in order (one exchange); return the plugin's responses in the same order.

        A response with an error not in `ok_errors` raises BrokerRefused naming the command.
        """
        tag = secrets.token_hex(8)
        tagged = [{**cmd, "correlationData": f"{tag}.{i}"} for i, cmd in enumerate(commands)]
        try:
            async with asyncio.timeout(self.timeout_s):
                responses = await self._exchange(tag, tagged)
        except aiomqtt.MqttCodeError as exc:
            if _code(exc.rc) in _AUTH_REFUSED:  # retrying cannot help: the admin account is wrong
                raise BrokerRefused(f"broker {self.host}:{self.port} refused the admin account "
                                    f"{self._username!r}: {exc}") from exc
            raise BrokerUnavailable(f"broker {self.host}:{self.port}: {exc}") from exc
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"broker {self.host}:{self.port} did not answer the account change: "
                                    f"{type(exc).__name__}: {exc}") from exc
        ordered = []
        for i, cmd in enumerate(commands):
            resp = responses[f"{tag}.{i}"]
            error = resp.get("error")
            if error and error not in ok_errors:
                raise BrokerRefused(f"broker refused {cmd['command']}: {error}")
            ordered.append(resp)
        return ordered

    async def _exchange(self, tag: str, commands: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        wanted = {cmd["correlationData"] for cmd in commands}
        got: dict[str, dict[str, Any]] = {}
        async with aiomqtt.Client(
            self.host, self.port, username=self._username, password=self._password,
            identifier=f"quanedge-dynsec-{tag}", tls_params=self._tls, timeout=self.timeout_s,
        ) as client:
            await client.subscribe(RESPONSE_TOPIC, qos=1)
            await client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}).encode(), qos=1)
            async for message in client.messages:
                try:
                    body = json.loads(bytes(message.payload))
                    responses = body["responses"]
                except (ValueError, KeyError, TypeError):
                    continue
                for resp in responses if isinstance(responses, list) else ():
                    if isinstance(resp, dict) and resp.get("correlationData") in wanted:
                        got[resp["correlationData"]] = resp
                if wanted <= got.keys():
                    return got
        raise aiomqtt.MqttError("connection closed before the broker answered")
