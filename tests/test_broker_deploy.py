"""The shipped broker config as deployed: its TLS listener example enabled (a box sends over TLS with
the MQTT identity enrolment gave it; the bridge stays on the loopback listener), and a broker
restart that keeps every account and every revocation (dynsec saves its file on each change)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import aiomqtt
import httpx
import pytest

from agent.uplink.mqtt import MqttSettings, MqttUplink
from core.reading import Reading
from tests.broker_support import SecureBroker, self_signed, start_secure_fleet
from tests.e2e_support import stop

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_ctrl") is None or shutil.which("openssl") is None,
                                reason="needs mosquitto, mosquitto_ctrl and openssl")


async def test_a_box_sends_over_the_tls_listener_with_its_enrolled_identity(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    broker = SecureBroker(tmp_path, tls=(cert, key)).start()
    fleet = None
    try:
        broker.bootstrap()
        fleet = start_secure_fleet(tmp_path, broker, "--mqtt-public-tls")
        r = httpx.post(fleet.url + "/api/v1/enroll", timeout=15,
                       json={"token": fleet.token(), "box_id": "tls-box", "hardware": "hw"})
        mqtt = r.json()["mqtt"]
        assert mqtt["tls"] is True
        assert broker.tls_port is not None
        with pytest.raises(aiomqtt.MqttError):  # plain MQTT to the TLS port gets nowhere
            async with aiomqtt.Client("127.0.0.1", broker.tls_port, username="tls-box", password=mqtt["password"],
                                      identifier=mqtt["client_id"], timeout=3):
                pass
        settings = MqttSettings(host="127.0.0.1", port=broker.tls_port, username=mqtt["username"],
                                password=mqtt["password"], tls=True, ca_file=str(cert),
                                client_id=mqtt["client_id"], topic_prefix=broker.prefix)
        async with MqttUplink(settings, "tls-box") as uplink:
            await uplink.send([Reading("rs1", "air_temp", 2.5, "degC", 1_700_000_000.0, seq=1)])
        for _ in range(100):
            if (await asyncio.to_thread(fleet.readings, "tls-box")):
                break
            await asyncio.sleep(0.1)
        assert [row[0] for row in fleet.readings("tls-box")] == [1]
    finally:
        if fleet is not None:
            stop(fleet.proc)
        broker.stop()


async def test_accounts_and_revocations_survive_a_broker_restart(tmp_path: Path) -> None:
    broker = SecureBroker(tmp_path).start()
    fleet = None
    try:
        broker.bootstrap()
        fleet = start_secure_fleet(tmp_path, broker)
        creds = {}
        for box in ("kept", "revoked"):
            r = httpx.post(fleet.url + "/api/v1/enroll", timeout=15,
                           json={"token": fleet.token(), "box_id": box, "hardware": "hw"})
            creds[box] = r.json()["mqtt"]
        assert httpx.post(f"{fleet.url}/api/v1/boxes/revoked/revoke", headers=fleet.headers(),
                          timeout=15).json()["broker_account_deleted"] is True
        broker.stop()
        broker.start()
        async with aiomqtt.Client("127.0.0.1", broker.port, username="kept", password=creds["kept"]["password"],
                                  identifier=creds["kept"]["client_id"], timeout=5) as c:
            await c.publish(f"{broker.prefix}/kept/telemetry", b"{}", qos=1)
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", broker.port, username="revoked",
                                      password=creds["revoked"]["password"],
                                      identifier=creds["revoked"]["client_id"], timeout=5):
                pass
    finally:
        if fleet is not None:
            stop(fleet.proc)
        broker.stop()
