"""Who is pushing? Authentication of devices that push to the box (plate cameras, access controllers).

A device is *named* by what it sends (a camera serial in the JSON body), but a name is not a proof:
anyone on the network can type a serial. So each configured sender has a `PushCredential`:

- `secret`: an HTTP Basic password (the device's push URL carries ``user:secret@``; Vzenith cameras
  and Hikvision's HTTP listening host both support credentials on the push), checked in constant
  time; the user name is `username` (default: the identity, i.e. the camera serial);
- `sources`: the source addresses/networks it may push from (a camera on a fixed LAN address);
- both: the password AND the address must match.

A credential with neither is refused at construction (and earlier, at config load): an empty
allow-list must never mean "accept anyone". `authenticate()` answers the set of identities the
request proved (a password proves one; an address proves every address-only sender configured for
it) or a `Refusal` with the HTTP status (401 + a Basic challenge when a password could help, else
403) and the metric reason: "unauthenticated" or "forbidden_source". The receiver then checks that
what the body claims (the serial) is one of the proven identities ("identity_mismatch" otherwise).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["PushCredential", "PushAuth", "Refusal", "parse_sources"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_sources(values: Iterable[str]) -> frozenset[Network]:
    """Addresses or CIDR networks ("192.168.1.100", "10.0.0.0/24"); ValueError naming the bad one."""
    out = set()
    for v in values:
        try:
            out.add(ipaddress.ip_network(v, strict=False))
        except (ValueError, TypeError):
            raise ValueError(f"not an IP address or network: {v!r}") from None
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class PushCredential:
    identity: str                              # the camera serial, or the controller's device name
    secret: str | None = None                  # HTTP Basic password
    username: str | None = None                # HTTP Basic user name (default: identity)
    sources: frozenset[Network] = frozenset()  # allowed source networks (empty: any, needs a secret)

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("a push credential needs an identity")
        if not self.secret and not self.sources:
            raise ValueError(f"sender {self.identity!r} has neither a secret nor source addresses: "
                             "a name alone is not authentication")
        if self.secret is not None and len(self.secret) < 8:
            raise ValueError(f"sender {self.identity!r}: the secret must be at least 8 characters")

    @property
    def user(self) -> str:
        return self.username or self.identity

    def __repr__(self) -> str:  # never print the secret
        return f"PushCredential(identity={self.identity!r}, secret={'***' if self.secret else None}, " \
               f"sources={sorted(map(str, self.sources))})"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int          # 401 or 403
    reason: str          # metric label: unauthenticated | forbidden_source
    message: str

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("WWW-Authenticate", 'Basic realm="quanedge", charset="UTF-8"'),) if self.status == 401 else ()


class PushAuth:
    def __init__(self, credentials: Sequence[PushCredential]) -> None:
        if not credentials:
            raise ValueError("no senders configured: an empty allow-list would accept anyone")
        by_user: dict[str, PushCredential] = {}
        for c in credentials:
            if c.secret and c.user in by_user:
                raise ValueError(f"two senders share the user name {c.user!r}")
            if c.secret:
                by_user[c.user] = c
        self._by_user = by_user
        self._address_only = [c for c in credentials if not c.secret]
        self.identities = frozenset(c.identity for c in credentials)

    def authenticate(self, headers: Mapping[str, str], peer: str) -> frozenset[str] | Refusal:
        """`headers` with lower-case names; `peer` is tinyhttp's "host:port"."""
        addr = _address(peer)
        auth = headers.get("authorization")
        if auth is not None:
            user, password = _basic(auth)
            cred = self._by_user.get(user) if user is not None else None
            # compare even when the user is unknown, so the answer time does not tell which users exist
            expected = cred.secret if cred is not None and cred.secret else "\x00" * 16
            ok = hmac.compare_digest((password or "").encode("utf-8", "surrogatepass"),
                                     expected.encode("utf-8"))
            if cred is None or not ok:
                return Refusal(401, "unauthenticated", "wrong user name or password")
            if cred.sources and (addr is None or not any(addr in n for n in cred.sources)):
                return Refusal(403, "forbidden_source", f"{cred.identity!r} may not push from {addr}")
            return frozenset({cred.identity})
        proven = frozenset(c.identity for c in self._address_only
                           if addr is not None and any(addr in n for n in c.sources))
        if proven:
            return proven
        if self._by_user:
            return Refusal(401, "unauthenticated", "credentials required")
        return Refusal(403, "forbidden_source", f"no sender may push from {addr}")


def _address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of tinyhttp's peer "host:port" ("::1:5555" for IPv6)."""
    try:
        addr = ipaddress.ip_address(peer.rpartition(":")[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _basic(header: str) -> tuple[str | None, str | None]:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > 1024:
        return None, None
    try:
        raw = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None, None
    user, sep, password = raw.partition(":")
    return (user, password) if sep else (None, None)
