"""Who may use which topic, as dynamic-security roles. Pure data: no broker, no I/O.

mosquitto 2.0's dynsec matches ACL topics literally (the %u / %c patterns arrived with 2.1), so
every box gets its own role `box.<id>` naming its own topics; the broker's default ACL access
(deny publish, deny subscribe, deny receive: what `mosquitto_ctrl dynsec init` writes) refuses
everything else. A box's client id is bound to `quanedge-agent-<id>` (what the agent uses): it can
neither take over another client's session (the bridge's, another box's) nor be taken over by one.
"""

from __future__ import annotations

from typing import Any

from fleet_server.store.base import check_box_id

__all__ = ["BOX_PUBLISH", "BOX_SUBSCRIBE", "box_client_id", "box_role", "box_role_name", "bridge_role"]

#: What box X publishes, under {prefix}/X/ (events and results are for what is coming).
BOX_PUBLISH = ("telemetry", "status", "events/#", "results/#")
#: What box X subscribes to and receives, under {prefix}/X/.
BOX_SUBSCRIBE = ("commands/#", "ack")
BRIDGE_ROLE = "quanedge.bridge"


def box_client_id(box_id: str) -> str:
    """The only MQTT client id box `box_id` may connect with (the agent's default too)."""
    return f"quanedge-agent-{check_box_id(box_id)}"


def box_role_name(box_id: str) -> str:
    return f"box.{check_box_id(box_id)}"


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True, "priority": 0}


def box_role(prefix: str, box_id: str) -> dict[str, Any]:
    """The dynsec `createRole` arguments for box `box_id` (rolename, acls)."""
    base = f"{prefix}/{check_box_id(box_id)}"
    acls = [_acl("publishClientSend", f"{base}/{t}") for t in BOX_PUBLISH]
    for t in BOX_SUBSCRIBE:
        acls += [_acl("subscribePattern", f"{base}/{t}"), _acl("publishClientReceive", f"{base}/{t}"),
                 _acl("unsubscribePattern", f"{base}/{t}")]
    return {"rolename": box_role_name(box_id), "acls": acls}


def bridge_role(prefix: str) -> dict[str, Any]:
    """The fleet server bridge's role: read every box's telemetry and status, write commands/acks.

    mosquitto 2.0 checks a subscription's ACL against the whole filter, `$share/<group>/` included,
    so the replicas' shared subscriptions (any group) need their own patterns; the unshared ones
    stay allowed (a session made by an earlier version unsubscribes from them)."""
    acls = []
    for t in ("telemetry", "status"):
        topic = f"{prefix}/+/{t}"
        acls += [_acl("subscribePattern", topic), _acl("publishClientReceive", topic),
                 _acl("unsubscribePattern", topic), _acl("subscribePattern", f"$share/+/{topic}"),
                 _acl("unsubscribePattern", f"$share/+/{topic}")]
    acls += [_acl("publishClientSend", f"{prefix}/+/commands/#"), _acl("publishClientSend", f"{prefix}/+/ack")]
    return {"rolename": BRIDGE_ROLE, "acls": acls}
