"""The broker roles as data, the broker/TLS settings checks, and the public API of fleet_server.broker."""

from __future__ import annotations

import pytest

import fleet_server.broker as broker
from core.errors import ConfigError
from fleet_server.broker.acl import box_client_id, box_role, bridge_role
from fleet_server.settings import ServerSettings


def test_public_api_is_pinned() -> None:
    assert sorted(broker.__all__) == ["BrokerAccounts", "DynsecAccounts", "DynsecClient", "accounts_from_settings",
                                      "box_client_id", "box_role", "bridge_role"]


def test_a_box_role_names_only_its_own_topics() -> None:
    role = box_role("city/qe", "pole-7")
    assert role["rolename"] == "box.pole-7"
    sends = {a["topic"] for a in role["acls"] if a["acltype"] == "publishClientSend"}
    subs = {a["topic"] for a in role["acls"] if a["acltype"] == "subscribePattern"}
    assert sends == {"city/qe/pole-7/telemetry", "city/qe/pole-7/status", "city/qe/pole-7/events/#",
                     "city/qe/pole-7/results/#"}
    assert subs == {"city/qe/pole-7/commands/#", "city/qe/pole-7/ack"}
    assert all(a["allow"] for a in role["acls"]) and not any("+" in a["topic"] for a in role["acls"])
    assert box_client_id("pole-7") == "quanedge-agent-pole-7"


@pytest.mark.parametrize("box_id", ["a/b", "+", "#", "", "x" * 65])
def test_a_box_id_that_would_widen_a_topic_is_refused(box_id: str) -> None:
    with pytest.raises(ValueError):
        box_role("quanedge", box_id)


def test_the_bridge_reads_every_box_and_writes_only_commands_and_acks() -> None:
    acls = bridge_role("quanedge")["acls"]
    assert {a["topic"] for a in acls if a["acltype"] == "subscribePattern"} == {
        "quanedge/+/telemetry", "quanedge/+/status",                         # a session made before replicas
        "$share/+/quanedge/+/telemetry", "$share/+/quanedge/+/status"}       # the replicas, any share group
    assert {a["topic"] for a in acls if a["acltype"] == "publishClientReceive"} == {"quanedge/+/telemetry",
                                                                                    "quanedge/+/status"}
    assert {a["topic"] for a in acls if a["acltype"] == "publishClientSend"} == {"quanedge/+/commands/#",
                                                                                 "quanedge/+/ack"}


class _Recorder:
    def __init__(self) -> None:
        self.commands: list[dict] = []

    async def run(self, commands: list[dict], ok_errors: tuple[str, ...] = ()) -> None:
        self.commands += commands


@pytest.mark.parametrize("client_id", [None, "quanedge-fleet-only"])
async def test_the_bridge_account_is_bound_to_one_client_id_only_when_asked(client_id: str | None) -> None:
    """Unbound by default: each fleet server replica connects with its own client id."""
    recorder = _Recorder()
    await broker.DynsecAccounts(recorder, "quanedge").bootstrap("quanedge-fleet", "pw", client_id)  # type: ignore[arg-type]
    [create] = [c for c in recorder.commands if c["command"] == "createClient"]
    assert create.get("clientid") == client_id and create["roles"] == [{"rolename": "quanedge.bridge"}]


@pytest.mark.parametrize("kwargs, key", [
    ({"broker_admin_username": "adm"}, "broker_admin_password"),
    ({"broker_admin_username": "adm", "broker_admin_password": "pw"}, "mqtt_host"),
    ({"tls_cert_file": "/nonexistent.pem"}, "tls_key_file"),
    ({"tls_cert_file": "/nonexistent.pem", "tls_key_file": "/nonexistent.key"}, "tls_cert_file"),
    ({"mqtt_public_port": 0}, "mqtt_public_port"),
])
def test_bad_broker_and_tls_settings_fail_at_construction(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerSettings(db_path="x.db", admin_token="a" * 20, **kwargs)
    assert key in str(info.value)


def test_secrets_are_not_in_the_settings_repr() -> None:
    s = ServerSettings(db_path="x.db", admin_token="admin-secret-0123456789", mqtt_host="h",
                       mqtt_username="u", mqtt_password="bridge-secret", broker_admin_username="adm",
                       broker_admin_password="adm-secret")
    assert not any(secret in repr(s) for secret in ("admin-secret", "bridge-secret", "adm-secret"))
