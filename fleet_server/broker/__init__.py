"""The broker side of box identity: per-box MQTT accounts in mosquitto's dynamic-security plugin.

    acl.py       pure: the topics a box / the bridge may use, as dynsec roles (no I/O)
    dynsec.py    `DynsecClient`: one request/response exchange over $CONTROL/dynamic-security/v1
    accounts.py  `BrokerAccounts`: create/rotate a box's account, delete it (kicks the box at once),
                 bootstrap the bridge's account
"""

from fleet_server.broker.accounts import BrokerAccounts, DynsecAccounts, accounts_from_settings
from fleet_server.broker.acl import box_client_id, box_role, bridge_role
from fleet_server.broker.dynsec import DynsecClient

__all__ = ["BrokerAccounts", "DynsecAccounts", "DynsecClient", "accounts_from_settings", "box_client_id", "box_role",
           "bridge_role"]
