"""The client's IP address: the peer, or the right-most untrusted X-Forwarded-For hop behind our proxies."""

from __future__ import annotations

import ipaddress

from aiohttp import web


class ClientAddress:
    """Resolves a request's client address, believing X-Forwarded-For only from trusted proxies."""

    def __init__(self, trusted_proxies: list[str]) -> None:
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def __call__(self, request: web.Request) -> str:
        peer = request.remote or "unknown"
        if not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)


def limit_key(address: str) -> str:
    """What rate limits count by: the address, or for IPv6 its /64 (one subscriber's block:
    rotating through it must not buy fresh quota)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
