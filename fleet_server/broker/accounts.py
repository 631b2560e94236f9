"""`BrokerAccounts`: the fleet server's view of broker identities; `DynsecAccounts` implements it.

Each operation is one idempotent exchange (safe to retry after a timeout whose outcome is unknown):
- `set_box(box_id, password)`: (re)create box X's role and account with this password. An old
  account is deleted first, which disconnects a box still connected with the old password.
- `delete_box(box_id)`: delete the account and its role; mosquitto disconnects the box at once.
- `bootstrap(...)`: create the bridge's role and account (run once, by `quanedge fleet broker init`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import aiomqtt

from fleet_server.broker.acl import box_client_id, box_role, box_role_name, bridge_role
from fleet_server.broker.dynsec import DynsecClient

if TYPE_CHECKING:
    from fleet_server.settings import ServerSettings

__all__ = ["BrokerAccounts", "DynsecAccounts", "accounts_from_settings"]

_GONE = ("Client not found", "Role not found")


class BrokerAccounts(Protocol):
    async def set_box(self, box_id: str, password: str) -> None: ...

    async def delete_box(self, box_id: str) -> None: ...


class DynsecAccounts:
    def __init__(self, client: DynsecClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def set_box(self, box_id: str, password: str) -> None:
        role = box_role(self.prefix, box_id)
        await self.client.run([
            {"command": "deleteClient", "username": box_id},
            {"command": "deleteRole", "rolename": role["rolename"]},
            {"command": "createRole", **role},
            {"command": "createClient", "username": box_id, "password": password,
             "clientid": box_client_id(box_id), "roles": [{"rolename": role["rolename"]}]},
        ], ok_errors=_GONE)

    async def delete_box(self, box_id: str) -> None:
        await self.client.run([
            {"command": "deleteClient", "username": box_id},
            {"command": "deleteRole", "rolename": box_role_name(box_id)},
        ], ok_errors=_GONE)

    async def bootstrap(self, bridge_username: str, bridge_password: str, bridge_client_id: str | None = None) -> None:
        """Create (or reset) the bridge's role and account, and deny by default what no role allows.
        `bridge_client_id` binds the account to that one client id (a single replica); None lets every
        replica connect with its own (`quanedge-fleet-<prefix>@<replica id>`)."""
        role = bridge_role(self.prefix)
        bind = {} if bridge_client_id is None else {"clientid": bridge_client_id}
        await self.client.run([
            {"command": "setDefaultACLAccess", "acls": [
                {"acltype": "publishClientSend", "allow": False},
                {"acltype": "publishClientReceive", "allow": False},
                {"acltype": "subscribe", "allow": False},
                {"acltype": "unsubscribe", "allow": True},
            ]},
            {"command": "deleteClient", "username": bridge_username},
            {"command": "deleteRole", "rolename": role["rolename"]},
            {"command": "createRole", **role},
            {"command": "createClient", "username": bridge_username, "password": bridge_password,
             **bind, "roles": [{"rolename": role["rolename"]}]},
        ], ok_errors=_GONE)


def accounts_from_settings(settings: ServerSettings) -> DynsecAccounts | None:
    """The broker accounts the server manages, or None when no broker admin account is set."""
    if not settings.broker_accounts_enabled:
        return None
    assert settings.mqtt_host and settings.broker_admin_username and settings.broker_admin_password
    tls = (aiomqtt.TLSParameters(ca_certs=settings.mqtt_ca_file, certfile=settings.mqtt_cert_file,
                                 keyfile=settings.mqtt_key_file) if settings.mqtt_tls else None)
    client = DynsecClient(settings.mqtt_host, settings.mqtt_port, settings.broker_admin_username,
                          settings.broker_admin_password, tls_params=tls, timeout_s=settings.broker_timeout_s)
    return DynsecAccounts(client, settings.topic_prefix)
