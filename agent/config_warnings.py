"""Things a box config allows but an installer should hear about (`quanedge agent check-config`).

    config_warnings(cfg) -> ["warning text", ...]

Not errors: the agent runs with them. Each names the file, the key and what to do instead.
"""

from __future__ import annotations

import ipaddress

from agent.config import AgentConfig

__all__ = ["config_warnings"]


def _loopback(host: str | None) -> bool:
    if host in (None, "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_warnings(cfg: AgentConfig) -> list[str]:
    out: list[str] = []
    where = str(cfg.path)
    m = cfg.uplink.mqtt
    if cfg.uplink.kind == "mqtt" and m is not None and m.password is not None and not m.tls:
        out.append(f"{where}: [uplink.mqtt.password] is set but tls = false: the broker password crosses the "
                   "network in clear text; set tls = true (and ca_file) or use a client certificate")
    for i, d in enumerate(cfg.devices):
        host = getattr(d, "listen_host", None)
        port = getattr(d, "listen_port", None)
        if port is None or _loopback(host):
            continue
        senders = getattr(d, "cameras", ()) or getattr(d, "event_senders", ())
        if any(s.secret and not s.sources for s in senders):
            out.append(f"{where}: [device[{i}].listen] {host}:{port} accepts HTTP Basic secrets over plain HTTP "
                       f"from any address; add sources (the device's address) so a sniffed secret is not enough")
    return out
