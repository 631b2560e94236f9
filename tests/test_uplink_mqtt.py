"""MqttUplink against real mosquitto brokers: the shared one on 127.0.0.1:1883, and private ones
(started here on free ports) for tests that kill, freeze, lock down or TLS-wrap the broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.uplink.base import Uplink
from agent.uplink.codec import encode_batch
from agent.uplink.mqtt import MqttSettings, MqttUplink
from core.errors import ConfigError, UplinkRejected, UplinkUnavailable
from core.reading import Reading, RecordClass, from_row

SHARED = ("127.0.0.1", 1883)


# -- helpers -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_batch(n: int, start: int = 1) -> list[Reading]:
    return [
        Reading(device=f"ws-{i % 7}", point="air_temp", value=round(20 + i * 0.01, 2), unit="degC",
                ts=1_700_000_000.0 + i, cls=RecordClass.ALARM if i % 100 == 0 else RecordClass.ROUTINE,
                text="ü" if i % 250 == 0 else None, seq=start + i)
        for i in range(n)
    ]


def unique(name: str) -> tuple[str, str]:
    """A topic prefix and box id no other test (or earlier run) shares."""
    tag = uuid.uuid4().hex[:10]
    return f"qe-test-{tag}", f"{name}-{tag}"


class Mosquitto:
    """A private broker process on a free port that tests may kill, freeze and restart."""

    def __init__(self, workdir: Path, conf: str = "allow_anonymous true\n") -> None:
        self.port = free_port()
        self.conf_file = workdir / f"mosquitto-{self.port}.conf"
        root = "user root\n" if os.geteuid() == 0 else ""  # as root it would drop to user mosquitto
        self.conf_file.write_text(f"listener {self.port} 127.0.0.1\n{root}{conf}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL also ends a frozen (SIGSTOPped) broker, without letting it run first
            self.proc.wait()
            self.proc.stderr.close()  # type: ignore[union-attr]
        self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def broker(tmp_path: Path):
    b = Mosquitto(tmp_path).start()
    yield b
    b.kill()


@asynccontextmanager
async def subscriber(host: str, port: int, topic: str, **kw) -> AsyncIterator[asyncio.Queue[aiomqtt.Message]]:
    """Subscribe (QoS 1) and feed every message into a queue."""
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    async with aiomqtt.Client(host, port, **kw) as client:
        await client.subscribe(topic, qos=1)

        async def pump() -> None:
            async for message in client.messages:
                queue.put_nowait(message)

        task = asyncio.create_task(pump())
        try:
            yield queue
        finally:
            task.cancel()
            await asyncio.wait((task,))


async def next_status(queue: asyncio.Queue[aiomqtt.Message], timeout: float = 5.0) -> dict:
    message = await asyncio.wait_for(queue.get(), timeout)
    return json.loads(message.payload)


async def assert_no_stray_tasks() -> None:
    await asyncio.sleep(0.05)  # let aiomqtt finish cancelling its per-client task (it is cancelled thread-safely)
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == [], f"leaked tasks: {others}"


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, key", [
    ({"port": 0}, "port"),
    ({"port": 70000}, "port"),
    ({"host": " "}, "host"),
    ({"password": "x"}, "password"),
    ({"ca_file": "/etc/ca.pem"}, "ca_file"),
    ({"insecure": True}, "insecure"),
    ({"tls": True, "cert_file": "/c.pem"}, "key_file"),
    ({"tls": True, "key_file": "/k.pem"}, "cert_file"),
    ({"keepalive_s": 0}, "keepalive_s"),
    ({"topic_prefix": "a/#"}, "topic_prefix"),
    ({"topic_prefix": "a/"}, "topic_prefix"),
    ({"publish_timeout_s": 0}, "publish_timeout_s"),
    ({"connect_timeout_s": float("inf")}, "connect_timeout_s"),
])
def test_bad_settings_fail_at_construction(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[uplink\.mqtt\.{key}\]"):
        MqttSettings(**{"host": "127.0.0.1", **kwargs})


def test_bad_box_id_and_missing_ca_file_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="box.id"):
        MqttUplink(MqttSettings("127.0.0.1"), "a/b")
    with pytest.raises(ConfigError, match="ca_file"):
        MqttUplink(MqttSettings("127.0.0.1", tls=True, ca_file=str(tmp_path / "missing.pem")), "box")


def test_public_api_is_pinned() -> None:
    from agent.uplink import codec, mqtt
    assert mqtt.__all__ == ["MqttSettings", "MqttUplink"] and codec.__all__ == ["encode_batch"]


def test_password_is_not_in_repr() -> None:
    assert "s3cret" not in repr(MqttSettings("h", username="u", password="s3cret"))


# -- the shared broker -------------------------------------------------------------------------

async def test_subscriber_receives_exactly_the_batch_and_status_is_retained() -> None:
    prefix, box = unique("exact")
    batch = make_batch(500)
    async with subscriber(*SHARED, f"{prefix}/{box}/telemetry") as telemetry:
        async with MqttUplink(MqttSettings(*SHARED, ack="broker", topic_prefix=prefix), box) as up:
            assert isinstance(up, Uplink) and up.connected
            # a late subscriber sees the retained "online" status
            async with subscriber(*SHARED, f"{prefix}/{box}/status") as status:
                online = await next_status(status)
            assert online["state"] == "online" and abs(online["ts"] - time.time()) < 60
            await up.send(batch)
            message = await asyncio.wait_for(telemetry.get(), 5)
        assert message.qos == 1 and not message.retain
        assert message.payload == encode_batch(box, batch)
        body = json.loads(message.payload)
        assert body["box_id"] == box
        assert [from_row(row) for row in body["readings"]] == batch
        await asyncio.sleep(0.2)
        assert telemetry.empty(), "exactly one message per batch"
    async with subscriber(*SHARED, f"{prefix}/{box}/status") as status:
        assert (await next_status(status))["state"] == "offline"  # clean exit left "offline" retained
    await assert_no_stray_tasks()


async def test_unencodable_batch_is_rejected_and_send_outside_block_is_an_error() -> None:
    prefix, box = unique("nan")
    uplink = MqttUplink(MqttSettings(*SHARED, ack="broker", topic_prefix=prefix), box)
    with pytest.raises(RuntimeError):
        await uplink.send(make_batch(1))
    async with uplink as up:
        with pytest.raises(UplinkRejected, match="row 1"):
            await up.send([*make_batch(1), Reading("d", "p", float("nan"), "u", 1.0, seq=2)])
        await up.send(make_batch(3))  # still usable


async def test_last_will_appears_when_the_agent_dies_abruptly() -> None:
    prefix, box = unique("will")
    script = textwrap.dedent(f"""
        import asyncio, sys
        from agent.uplink.mqtt import MqttSettings, MqttUplink
        async def main():
            async with MqttUplink(MqttSettings("127.0.0.1", 1883, ack="broker", topic_prefix={prefix!r}), {box!r}):
                print("ready", flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """)
    async with subscriber(*SHARED, f"{prefix}/{box}/status") as status:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)  # type: ignore[union-attr]
            assert line.strip() == b"ready"
            assert (await next_status(status))["state"] == "online"
            proc.kill()  # SIGKILL: no DISCONNECT, the kernel just closes the socket
            killed_at = time.monotonic()
            will = await next_status(status, timeout=5)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
    assert will["state"] == "offline"
    assert time.monotonic() - killed_at < 3
    async with subscriber(*SHARED, f"{prefix}/{box}/status") as status:
        late = await asyncio.wait_for(status.get(), 5)
    assert late.retain and json.loads(late.payload)["state"] == "offline"


# -- private brokers: outages ------------------------------------------------------------------

async def test_send_fails_fast_while_broker_is_down_and_recovers_after_restart(broker: Mosquitto) -> None:
    prefix, box = unique("outage")
    settings = MqttSettings("127.0.0.1", broker.port, ack="broker", topic_prefix=prefix,
                            connect_timeout_s=3, publish_timeout_s=5)
    async with MqttUplink(settings, box) as up:
        await up.send(make_batch(10))
        broker.kill()
        await asyncio.sleep(0.2)  # the client sees the connection drop
        assert not up.connected
        for _ in range(3):  # every send makes one attempt, no retry loop inside
            started = time.monotonic()
            with pytest.raises(UplinkUnavailable, match=f"127.0.0.1:{broker.port}"):
                await up.send(make_batch(10))
            assert time.monotonic() - started < 1.0
        broker.start()
        async with subscriber("127.0.0.1", broker.port, f"{prefix}/{box}/telemetry") as telemetry:
            await up.send(make_batch(10, start=11))
            assert up.connected
            body = json.loads((await asyncio.wait_for(telemetry.get(), 5)).payload)
        assert [row[0] for row in body["readings"]] == list(range(11, 21))
    await assert_no_stray_tasks()


async def test_broker_dying_while_awaiting_puback_fails_the_send_at_once(broker: Mosquitto) -> None:
    prefix, box = unique("midflight")
    settings = MqttSettings("127.0.0.1", broker.port, ack="broker", topic_prefix=prefix,
                            connect_timeout_s=2, publish_timeout_s=10)
    async with MqttUplink(settings, box) as up:
        broker.freeze()  # the PUBLISH goes out, no PUBACK comes back
        sending = asyncio.create_task(up.send(make_batch(100)))
        await asyncio.sleep(0.3)
        assert not sending.done()
        broker.kill()
        started = time.monotonic()
        with pytest.raises(UplinkUnavailable, match="lost before PUBACK"):
            await sending
        assert time.monotonic() - started < 1.0  # not the 10 s publish timeout
    await assert_no_stray_tasks()


async def test_missing_puback_times_out_and_next_send_reconnects(broker: Mosquitto) -> None:
    prefix, box = unique("frozen")
    settings = MqttSettings("127.0.0.1", broker.port, ack="broker", topic_prefix=prefix, connect_timeout_s=2,
                            publish_timeout_s=0.5)
    async with MqttUplink(settings, box) as up:
        broker.freeze()
        started = time.monotonic()
        with pytest.raises(UplinkUnavailable, match="no PUBACK"):
            await up.send(make_batch(5))
        assert 0.4 < time.monotonic() - started < 2.5
        assert not up.connected
        broker.thaw()
        await up.send(make_batch(5, start=6))
        assert up.connected
    await assert_no_stray_tasks()


async def test_cancelled_send_leaves_the_uplink_usable(broker: Mosquitto) -> None:
    prefix, box = unique("cancel")
    settings = MqttSettings("127.0.0.1", broker.port, ack="broker", topic_prefix=prefix, connect_timeout_s=2)
    async with (subscriber("127.0.0.1", broker.port, f"{prefix}/{box}/telemetry") as telemetry,
                MqttUplink(settings, box) as up):
        broker.freeze()
        sending = asyncio.create_task(up.send(make_batch(3)))
        await asyncio.sleep(0.2)
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending
        broker.thaw()
        await up.send(make_batch(3, start=4))
        seqs = set()
        while 4 not in seqs:  # the cancelled batch may still arrive: at-least-once, deduped by seq
            body = json.loads((await asyncio.wait_for(telemetry.get(), 5)).payload)
            seqs.update(row[0] for row in body["readings"])
    await assert_no_stray_tasks()


async def test_entering_with_broker_down_raises_unavailable_fast(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)  # configured, not started
    prefix, box = unique("late")
    settings = MqttSettings("127.0.0.1", broker.port, ack="broker", topic_prefix=prefix)
    started = time.monotonic()
    with pytest.raises(UplinkUnavailable, match=f"connect to 127.0.0.1:{broker.port}.*refused"):
        async with MqttUplink(settings, box):
            pass
    assert time.monotonic() - started < 1.0
    try:
        broker.start()
        async with MqttUplink(settings, box) as up:  # the drain makes a fresh uplink after its backoff
            await up.send(make_batch(1))
    finally:
        broker.kill()
    await assert_no_stray_tasks()


# -- private brokers: credentials and TLS ------------------------------------------------------

async def test_password_auth_and_wrong_password_is_rejected(tmp_path: Path) -> None:
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "agent", "right-pw"], check=True)
    broker = Mosquitto(tmp_path, f"allow_anonymous false\npassword_file {pwfile}\n").start()
    prefix, box = unique("auth")
    try:
        good = MqttSettings("127.0.0.1", broker.port, ack="broker", username="agent", password="right-pw",
                            topic_prefix=prefix)
        async with MqttUplink(good, box) as up:
            await up.send(make_batch(2))
        for bad in (MqttSettings("127.0.0.1", broker.port, ack="broker", username="agent", password="wrong",
                                 topic_prefix=prefix),
                    MqttSettings("127.0.0.1", broker.port, ack="broker", topic_prefix=prefix)):
            started = time.monotonic()
            with pytest.raises(UplinkRejected, match="refused the connection.*username/password"):
                async with MqttUplink(bad, box):
                    pass
            assert time.monotonic() - started < 2
    finally:
        broker.kill()
    await asyncio.sleep(0.1)  # paho closes the refused socket when the broker hangs up
    await assert_no_stray_tasks()


def _cert(subject: str, issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, *, ca: bool,
          usage: list[x509.ObjectIdentifier] | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   (issuer_key if issuer else key).public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage or []), critical=False)
    return key, builder.sign(issuer_key if issuer else key, hashes.SHA256())


def _write_pem(path: Path, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


async def test_tls_with_ca_file_and_mutual_tls(tmp_path: Path) -> None:
    ca_key, ca = _cert("quanedge test CA", ec.generate_private_key(ec.SECP256R1()), None, ca=True)
    srv_key, srv = _cert("broker", ca_key, ca.subject, ca=False, usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    cli_key, cli = _cert("box-1", ca_key, ca.subject, ca=False, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _, other_ca = _cert("some other CA", ec.generate_private_key(ec.SECP256R1()), None, ca=True)
    _write_pem(tmp_path / "ca.pem", None, ca)
    _write_pem(tmp_path / "other.pem", None, other_ca)
    _write_pem(tmp_path / "server.pem", srv_key, srv)
    _write_pem(tmp_path / "client.pem", cli_key, cli)
    mtls_port = free_port()
    tls = f"cafile {tmp_path}/ca.pem\ncertfile {tmp_path}/server.pem\nkeyfile {tmp_path}/server.key\n"
    broker = Mosquitto(tmp_path, f"allow_anonymous true\n{tls}\nlistener {mtls_port} 127.0.0.1\n{tls}"
                                 "require_certificate true\n").start()
    prefix, box = unique("tls")
    try:
        plain_tls = MqttSettings("127.0.0.1", broker.port, ack="broker", tls=True, ca_file=str(tmp_path / "ca.pem"),
                                 topic_prefix=prefix)
        async with subscriber("127.0.0.1", broker.port, f"{prefix}/{box}/telemetry",
                              tls_params=aiomqtt.TLSParameters(ca_certs=str(tmp_path / "ca.pem"))) as telemetry:
            async with MqttUplink(plain_tls, box) as up:
                assert up.connected
                await up.send(make_batch(4))
            assert json.loads((await asyncio.wait_for(telemetry.get(), 5)).payload)["box_id"] == box

        mutual = MqttSettings("127.0.0.1", mtls_port, ack="broker", tls=True, ca_file=str(tmp_path / "ca.pem"),
                              cert_file=str(tmp_path / "client.pem"), key_file=str(tmp_path / "client.key"),
                              topic_prefix=prefix)
        async with MqttUplink(mutual, box) as up:
            await up.send(make_batch(4))

        wrong_ca = MqttSettings("127.0.0.1", broker.port, ack="broker", tls=True, ca_file=str(tmp_path / "other.pem"),
                                topic_prefix=prefix)
        with pytest.raises(UplinkRejected, match="TLS verification"):
            async with MqttUplink(wrong_ca, box):
                pass
        # Without a client certificate the TLS 1.3 handshake completes and the broker hangs up
        # afterwards; aiomqtt only notices when its CONNACK wait (connect_timeout_s) runs out.
        no_client_cert = MqttSettings("127.0.0.1", mtls_port, ack="broker", tls=True, ca_file=str(tmp_path / "ca.pem"),
                                      topic_prefix=prefix, connect_timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(UplinkUnavailable):
            async with MqttUplink(no_client_cert, box):
                pass
        assert time.monotonic() - started < 1.5
    finally:
        broker.kill()
