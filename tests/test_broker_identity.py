"""Issue 9 finding 2: a box may speak only as itself on the broker, and revocation is immediate.

Real processes: mosquitto from the shipped config (dynsec, no anonymous access), bootstrapped with
`mosquitto_ctrl dynsec init` + `quanedge fleet broker init`; the fleet server (`quanedge fleet serve`)
with its bridge and broker admin accounts; boxes enrolled over HTTP, connecting with the MQTT
identity the enrolment gave them. Every "not stored" check is followed by a sentinel the same
client may publish, so the bridge has demonstrably processed what came before it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from core.reading import Reading
from tests.broker_support import SecureBroker, SecureFleet, start_secure_fleet
from tests.e2e_support import PY, stop, wait_for

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_ctrl") is None, reason="needs mosquitto + mosquitto_ctrl")

PREFIX = "quanedge"
REFUSED: list[str] = []  # spoof attempts the broker refused, counted for the closing note


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBroker, SecureFleet]]:
    tmp = tmp_path_factory.mktemp("identity")
    broker = SecureBroker(tmp, PREFIX).start()
    fleet = None
    try:
        broker.bootstrap()
        fleet = start_secure_fleet(tmp, broker)
        yield broker, fleet
    finally:
        if fleet is not None:
            stop(fleet.proc)
        broker.stop()
        print(f"\nspoof attempts refused: {len(REFUSED)}: {REFUSED}")


def enroll(fleet: SecureFleet, box_id: str) -> dict[str, Any]:
    r = httpx.post(fleet.url + "/api/v1/enroll", timeout=15,
                   json={"token": fleet.token(), "box_id": box_id, "hardware": f"hw-{box_id}", "site": "s1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mqtt"]["username"] == box_id and body["mqtt"]["client_id"] == f"quanedge-agent-{box_id}"
    return body


def telemetry(box_id: str, first: int, count: int) -> bytes:
    rows = [Reading("rs1", "air_temp", float(s), "degC", 1_700_000_000.0 + s, seq=s).to_row()
            for s in range(first, first + count)]
    return json.dumps({"box_id": box_id, "readings": rows}).encode()


def client(broker: SecureBroker, username: str | None, password: str | None, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, username=username, password=password, identifier=client_id,
                          timeout=5)


async def refused_to_connect(broker: SecureBroker, username: str | None, password: str | None,
                             client_id: str, what: str) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, username, password, client_id) as c:
            await c.publish(f"{PREFIX}/x/telemetry", b"{}", qos=1)
    REFUSED.append(what)


def refused(granted: Any) -> bool:
    code = granted[0]
    return int(getattr(code, "value", code)) >= 0x80


async def stored(fleet: SecureFleet, box_id: str, count: int) -> None:
    for _ in range(100):
        if len(await asyncio.to_thread(fleet.readings, box_id)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{box_id}: fewer than {count} readings stored")


@pytest.fixture(scope="module")
def boxes(setup: tuple[SecureBroker, SecureFleet]) -> dict[str, dict[str, Any]]:
    _, fleet = setup
    return {box: enroll(fleet, box) for box in ("box-a", "box-b", "box-c")}


async def test_anonymous_and_wrong_identities_cannot_connect(setup, boxes) -> None:
    broker, _ = setup
    a = boxes["box-a"]["mqtt"]
    await refused_to_connect(broker, None, None, "anon", "anonymous connect")
    await refused_to_connect(broker, "box-a", "not-the-password", "quanedge-agent-box-a", "wrong password")
    await refused_to_connect(broker, "box-b", a["password"], "quanedge-agent-box-b", "box-a's password as box-b")
    # A box cannot take over another client's session (the bridge's, another box's) by its client id.
    await refused_to_connect(broker, "box-a", a["password"], "quanedge-fleet-quanedge", "box-a as the bridge's id")
    await refused_to_connect(broker, "box-a", a["password"], "quanedge-agent-box-b", "box-a as box-b's client id")


async def test_a_box_publishes_its_own_telemetry_and_cannot_write_as_another(setup, boxes) -> None:
    broker, fleet = setup
    a = boxes["box-a"]["mqtt"]
    async with client(broker, "box-b", boxes["box-b"]["mqtt"]["password"], "quanedge-agent-box-b") as b:
        await b.publish(f"{PREFIX}/box-b/status", json.dumps({"state": "online", "ts": 1.0}).encode(), qos=1)
    async with client(broker, "box-a", a["password"], "quanedge-agent-box-a") as c:
        # Finding 2 as reproduced: forged rows for another box (seq 1001-1010) and a forged status.
        await c.publish(f"{PREFIX}/box-b/telemetry", telemetry("box-b", 1001, 10), qos=1)
        await c.publish(f"{PREFIX}/box-b/status", json.dumps({"state": "offline", "ts": 2.0}).encode(), qos=1)
        await c.publish(f"{PREFIX}/box-b/status", b"{}", qos=1, retain=True)
        await c.publish(f"{PREFIX}/box-b/ack", b"{}", qos=1)
        await c.publish(f"{PREFIX}/box-b/commands/reboot", b"{}", qos=1)
        await c.publish(f"{PREFIX}/box-a/commands/reboot", b"{}", qos=1)  # commands come from the server only
        REFUSED.extend(["telemetry as box-b", "status as box-b"])  # (the others are not observed here)
        # Its own telemetry goes through (the sentinel: the bridge handled everything before it).
        await c.publish(f"{PREFIX}/box-a/telemetry", telemetry("box-a", 1, 5), qos=1)
    await stored(fleet, "box-a", 5)
    assert fleet.readings("box-b") == []
    assert fleet.box("box-b")["online"] is True


async def test_the_real_box_is_not_shadowed_by_forged_rows(setup, boxes) -> None:
    """The finding's consequence: box-b's own seq 1001-1010 are all accepted, none 'duplicate'."""
    broker, fleet = setup
    async with client(broker, "box-b", boxes["box-b"]["mqtt"]["password"], "quanedge-agent-box-b") as b:
        await b.publish(f"{PREFIX}/box-b/telemetry", telemetry("box-b", 1001, 10), qos=1)
    await stored(fleet, "box-b", 10)
    assert [row[0] for row in fleet.readings("box-b")] == list(range(1001, 1011))


async def test_a_box_subscribes_only_to_its_own_command_and_ack_topics(setup, boxes) -> None:
    broker, _ = setup
    a = boxes["box-a"]["mqtt"]
    async with client(broker, "box-a", a["password"], "quanedge-agent-box-a") as c:
        assert not refused(await c.subscribe(f"{PREFIX}/box-a/commands/#", qos=1))
        assert not refused(await c.subscribe(f"{PREFIX}/box-a/ack", qos=1))
        for topic in (f"{PREFIX}/box-b/commands/#", f"{PREFIX}/box-b/ack", f"{PREFIX}/+/commands/#",
                      f"{PREFIX}/+/telemetry", f"{PREFIX}/#", "#", "$CONTROL/dynamic-security/#"):
            assert refused(await c.subscribe(topic, qos=1)), topic
            REFUSED.append(f"subscribe {topic}")


async def test_the_bridge_role_may_command_a_box_and_the_box_gets_only_its_own(setup, boxes) -> None:
    """The bridge's role may publish commands (a second account with that role publishes here, the
    running bridge is left alone); the box receives its own commands and not another box's."""
    from fleet_server.broker import DynsecClient
    from fleet_server.broker.acl import BRIDGE_ROLE

    broker, _ = setup
    admin = DynsecClient("127.0.0.1", broker.port, *broker.admin)
    await admin.run([{"command": "createClient", "username": "bridge-2", "password": "bridge-2-pw",
                      "clientid": "bridge-2", "roles": [{"rolename": BRIDGE_ROLE}]}])
    a = boxes["box-a"]["mqtt"]
    async with client(broker, "box-a", a["password"], "quanedge-agent-box-a") as c:
        await c.subscribe(f"{PREFIX}/box-a/commands/#", qos=1)
        async with client(broker, "bridge-2", "bridge-2-pw", "bridge-2") as server:
            await server.publish(f"{PREFIX}/box-b/commands/ping", b'{"n": 0}', qos=1)
            await server.publish(f"{PREFIX}/box-a/commands/ping", b'{"n": 1}', qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(c.messages))
        assert (message.topic.value, message.payload) == (f"{PREFIX}/box-a/commands/ping", b'{"n": 1}')


async def test_the_bridge_account_takes_each_replicas_client_id(setup) -> None:
    """`broker init` leaves the bridge account unbound: every fleet server replica connects with its
    own client id (`--bridge-client-id` would bind it to one, for a single server; tests/test_broker_acl)."""
    broker, _ = setup
    for replica in ("r1", "r2"):
        async with client(broker, *broker.bridge, f"quanedge-fleet-{PREFIX}@{replica}") as c:
            assert not refused(await c.subscribe(f"$share/quanedge-fleet/{PREFIX}/+/telemetry", qos=1))
            assert refused(await c.subscribe("$share/quanedge-fleet/other/+/telemetry", qos=1))


async def test_revoking_a_box_disconnects_it_at_once_and_kills_its_http_credential(setup, boxes) -> None:
    broker, fleet = setup
    c_box = boxes["box-c"]
    m = c_box["mqtt"]
    async with client(broker, "box-c", m["password"], "quanedge-agent-box-c") as c:
        await c.subscribe(f"{PREFIX}/box-c/commands/#", qos=1)

        async def until_dropped() -> None:
            async for _ in c.messages:
                pass
        watcher = asyncio.create_task(until_dropped())
        out = await asyncio.to_thread(subprocess.run, [*PY, "fleet", "box", "revoke", "box-c", "--server", fleet.url,
                                      "--admin-token", fleet.admin], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "broker account deleted" in out.stdout
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(5):
                await watcher
    REFUSED.append("revoked box kept connected")
    await refused_to_connect(broker, "box-c", m["password"], "quanedge-agent-box-c", "revoked box reconnects")
    r = httpx.post(fleet.url + "/api/v1/telemetry", content=telemetry("box-c", 1, 1), timeout=10,
                   headers={"Authorization": f"Bearer {c_box['credential']}", "Content-Type": "application/json"})
    assert r.status_code == 401
    REFUSED.append("revoked box's HTTP credential")


async def test_agent_enrols_and_its_mqtt_uplink_uses_the_identity_it_got(setup, tmp_path: Path) -> None:
    """agent.enroll stores the MQTT identity; the runtime's MQTT uplink (no username in the config) uses it."""
    from agent.config import load_config
    from agent.enroll import enroll as agent_enroll
    from agent.enroll import load_credential
    from agent.runtime import make_uplink_factory

    broker, fleet = setup
    cfg_path = tmp_path / "box.toml"
    cfg_path.write_text(f'[box]\nid = "box-agent"\nhardware = "hw-agent"\ndata_dir = "{tmp_path / "box"}"\n\n'
                        f'[uplink]\nkind = "mqtt"\n\n[uplink.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                        f'topic_prefix = "{PREFIX}"\n')
    cfg = load_config(cfg_path)
    cred = await asyncio.to_thread(agent_enroll, cfg, fleet.url, fleet.token())
    stored_cred = load_credential(cfg.credential_path)
    assert stored_cred == cred and cred.mqtt_username == "box-agent" and cred.mqtt_password
    assert "password" not in repr(cred) or cred.mqtt_password not in repr(cred)
    name, make = make_uplink_factory(load_config(cfg_path))
    assert name == "mqtt"
    async with make() as uplink:
        await uplink.send([Reading("rs1", "air_temp", 1.5, "degC", 1_700_000_000.0, seq=1)])
    await stored(fleet, "box-agent", 1)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PY, *args], capture_output=True, text=True, timeout=60)


async def test_agent_reenrolment_without_its_credential_waits_for_an_admin(setup, tmp_path: Path) -> None:
    """A wiped box (no credential file) re-enrolling its id: pending until `fleet box admit`; then it
    gets a new HTTP credential and MQTT password, and the old MQTT password no longer connects."""
    from agent.config import load_config
    from agent.enroll import EnrollmentPending
    from agent.enroll import enroll as agent_enroll

    broker, fleet = setup
    cfg_path = tmp_path / "box.toml"
    cfg_path.write_text(f'[box]\nid = "box-wiped"\nhardware = "hw-w"\ndata_dir = "{tmp_path / "box"}"\n\n'
                        f'[uplink]\nkind = "mqtt"\n\n[uplink.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
    cfg = load_config(cfg_path)
    first = await asyncio.to_thread(agent_enroll, cfg, fleet.url, fleet.token())
    cfg.credential_path.unlink()  # the box is wiped (or an impostor claims its id)
    with pytest.raises(EnrollmentPending):
        await asyncio.to_thread(agent_enroll, cfg, fleet.url, fleet.token())
    REFUSED.append("re-enrolment of a taken id without its credential (pending, not taken over)")
    listed = _cli("fleet", "box", "pending", "--server", fleet.url, "--admin-token", fleet.admin)
    assert listed.returncode == 0 and "box-wiped" in listed.stdout and "existing id" in listed.stdout
    request_id = listed.stdout.split()[0]
    with pytest.raises(EnrollmentPending):  # polling before the decision: still pending
        await asyncio.to_thread(agent_enroll, cfg, fleet.url, None)
    admitted = _cli("fleet", "box", "admit", request_id, "--server", fleet.url, "--admin-token", fleet.admin)
    assert admitted.returncode == 0, admitted.stderr
    second = await asyncio.to_thread(agent_enroll, cfg, fleet.url, None)  # collects the admitted request
    assert second.credential != first.credential and second.mqtt_password != first.mqtt_password
    await refused_to_connect(broker, "box-wiped", first.mqtt_password, "quanedge-agent-box-wiped",
                             "the replaced MQTT password")
    async with client(broker, "box-wiped", second.mqtt_password, "quanedge-agent-box-wiped") as c:
        await c.publish(f"{PREFIX}/box-wiped/telemetry", telemetry("box-wiped", 1, 1), qos=1)
    await stored(fleet, "box-wiped", 1)


async def test_admin_rejects_a_pending_request(setup, tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.enroll import EnrollmentPending
    from agent.enroll import enroll as agent_enroll
    from core.errors import EnrollmentError

    broker, fleet = setup
    cfg_path = tmp_path / "box.toml"
    cfg_path.write_text(f'[box]\nid = "box-a"\nhardware = "hw-impostor"\ndata_dir = "{tmp_path / "box"}"\n\n'
                        f'[uplink]\nkind = "mqtt"\n\n[uplink.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
    cfg = load_config(cfg_path)
    with pytest.raises(EnrollmentPending):
        await asyncio.to_thread(agent_enroll, cfg, fleet.url, fleet.token())
    listed = _cli("fleet", "box", "pending", "--server", fleet.url, "--admin-token", fleet.admin)
    line = next(ln for ln in listed.stdout.splitlines() if "hw-impostor" in ln)
    rejected = _cli("fleet", "box", "reject", line.split()[0], "--server", fleet.url, "--admin-token", fleet.admin)
    assert rejected.returncode == 0, rejected.stderr
    with pytest.raises(EnrollmentError, match="403"):
        await asyncio.to_thread(agent_enroll, cfg, fleet.url, None)
    assert not cfg.credential_path.exists()
    REFUSED.append("impostor re-enrolment rejected by the admin")


def test_fleet_serves_https_with_tls_cert_and_key(setup, tmp_path: Path) -> None:
    from tests.broker_support import self_signed
    from tests.e2e_support import free_port

    cert, key = self_signed(tmp_path)
    port = free_port()
    with open(tmp_path / "https.log", "ab") as log:  # the child has its own copy of the descriptor
        proc = subprocess.Popen([*PY, "fleet", "serve", "--db", str(tmp_path / "f.db"), "--port", str(port),
                                 "--admin-token", "a" * 20, "--tls-cert", str(cert), "--tls-key", str(key)],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        wait_for(lambda: httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=1).status_code
                 == 200, 30, "fleet server over HTTPS")
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        stop(proc)


async def test_agent_enroll_cli_rekeys_a_box_that_holds_its_credential(setup, tmp_path: Path) -> None:
    """`quanedge agent enroll` without a token: the box shows its credential, gets new secrets, keeps its site."""
    from agent.config import load_config
    from agent.enroll import load_credential

    broker, fleet = setup
    cfg_path = tmp_path / "box.toml"
    cfg_path.write_text('[box]\nid = "box-rekey"\nsite = "north"\nhardware = "hw-r"\n'
                        f'data_dir = "{tmp_path / "box"}"\n\n'
                        f'[uplink]\nkind = "mqtt"\n\n[uplink.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
    first = await asyncio.to_thread(_cli, "agent", "enroll", "-c", str(cfg_path), "--server", fleet.url,
                                    "--token", fleet.token())
    assert first.returncode == 0 and "MQTT account box-rekey" in first.stdout, first.stderr
    old = load_credential(load_config(cfg_path).credential_path)
    cfg_path.write_text(cfg_path.read_text().replace('site = "north"', 'site = "moved"'))
    second = await asyncio.to_thread(_cli, "agent", "enroll", "-c", str(cfg_path), "--server", fleet.url)
    assert second.returncode == 0, second.stderr
    new = load_credential(load_config(cfg_path).credential_path)
    assert old is not None and new is not None
    assert (new.credential, new.mqtt_password) != (old.credential, old.mqtt_password)
    assert fleet.box("box-rekey")["site"] == "north"
    await refused_to_connect(broker, "box-rekey", old.mqtt_password, "quanedge-agent-box-rekey",
                             "MQTT password replaced by a re-key")
    async with client(broker, "box-rekey", new.mqtt_password, "quanedge-agent-box-rekey") as c:
        await c.publish(f"{PREFIX}/box-rekey/telemetry", telemetry("box-rekey", 1, 1), qos=1)
    await stored(fleet, "box-rekey", 1)


async def test_the_dynsec_client_maps_broker_failures_to_our_errors(setup) -> None:
    from fleet_server.broker import DynsecClient
    from fleet_server.errors import BrokerRefused, BrokerUnavailable
    from tests.e2e_support import free_port

    broker, _ = setup
    with pytest.raises(BrokerUnavailable):
        await DynsecClient("127.0.0.1", free_port(), "a", "b", timeout_s=1).run([{"command": "listClients"}])
    with pytest.raises(BrokerRefused, match="admin account"):
        await DynsecClient("127.0.0.1", broker.port, broker.admin[0], "wrong").run([{"command": "listClients"}])
    with pytest.raises(BrokerRefused, match="createClient"):  # the plugin's own refusal, named
        await DynsecClient("127.0.0.1", broker.port, *broker.admin).run(
            [{"command": "createClient", "username": "box-a", "password": "x"}])
