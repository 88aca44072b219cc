"""Who "a client" is, decided once per request, for every per-client limit.

A client is the address of the socket that connected, unless that socket is a
proxy the operator named in ``VOICE_LAB_TRUSTED_PROXIES`` (comma-separated
addresses and CIDR networks): then it is the right-most ``X-Forwarded-For``
entry that is not itself a trusted proxy (each proxy appends the address it
saw, so everything left of that entry was written by the client and proves
nothing). ``*`` trusts whatever connects as one proxy hop: the header's last
entry is the client (a Hugging Face Space, whose proxy appends the visitor's
address and is the only way in; that is the default when ``SPACE_ID`` is set).
By default no proxy is trusted and the header is never read.

:class:`ClientAddress` (middleware, outermost of ours) puts the decision in
the ASGI scope's ``client``, so Gradio, fastrtc and our limits all see the
same address. uvicorn would otherwise decide first: its own proxy-header
handling trusts ``X-Forwarded-For`` from 127.0.0.1 by default (its
``FORWARDED_ALLOW_IPS``), which lets anything on the host, or a local proxy
that passes the header on unchanged, claim any address.
:func:`keep_uvicorn_out_of_it` turns that off.

Limits count by :func:`client_key`: the address, except that IPv6 addresses
are grouped per /64 (one customer's network: a visitor can rotate through
2^64 addresses in it).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass

from pipeline.server_settings import env_flag

log = logging.getLogger(__name__)

TRUSTED_PROXIES_ENV = "VOICE_LAB_TRUSTED_PROXIES"
# The older switch, kept as an alias: "1" means "*" (trust the connecting proxy's last entry).
TRUST_FORWARDED_FOR_ENV = "VOICE_LAB_TRUST_FORWARDED_FOR"
ANY_PEER = "*"
IPV6_GROUP_PREFIX = 64
# The client of a request with no socket address (an in-process test client, a unix socket).
UNKNOWN = "unknown"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed (none: the header is never read)."""

    networks: tuple[Network, ...] = ()
    any_peer: bool = False

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """``"127.0.0.1, 10.0.0.0/8"`` or ``"*"``; raises ValueError naming a bad entry."""
        entries = [entry.strip() for entry in text.split(",") if entry.strip()]
        if entries == [ANY_PEER]:
            return cls(any_peer=True)
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"{TRUSTED_PROXIES_ENV}: {entry!r} is not an address or CIDR network "
                    f"(or give {ANY_PEER!r} alone)"
                ) from None
        return cls(networks=tuple(networks))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> TrustedProxies:
        """``VOICE_LAB_TRUSTED_PROXIES``; else the alias; else ``*`` on a Space, none elsewhere."""
        configured = environ.get(TRUSTED_PROXIES_ENV, "").strip()
        if configured:
            return cls.parse(configured)
        if environ.get(TRUST_FORWARDED_FOR_ENV, "").strip():
            return cls(any_peer=env_flag(TRUST_FORWARDED_FOR_ENV, False, environ))
        return cls(any_peer=bool(environ.get("SPACE_ID")))

    @property
    def enabled(self) -> bool:
        return self.any_peer or bool(self.networks)

    def _listed(self, address: Address | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def client_address(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> str | None:
        """The client's address: ``peer``, or what a trusted ``peer`` says it forwarded."""
        if peer is None or not self.enabled:
            return peer
        if not (self.any_peer or self._listed(_address(peer))):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        for hop in reversed([hop for hop in hops if hop]):
            address = _address(hop)
            if address is None:
                # Only a proxy we trust wrote this far right, and it wrote no address:
                # count the request as that proxy's rather than believe what is left of it.
                return peer
            if not self._listed(address):
                return str(address)
            peer = str(address)  # a trusted proxy further out: keep walking left
        return peer


def _address(text: str) -> Address | None:
    """An address from an ``X-Forwarded-For`` entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_key(address: str | None) -> str:
    """What the per-client limits count by: the address, IPv6 grouped per /64."""
    if not address:
        return UNKNOWN
    parsed = _address(address)
    if parsed is None:
        return address[:64]
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, IPV6_GROUP_PREFIX), strict=False))
    return str(parsed)


def client_of(request) -> str:
    """The :func:`client_key` of a Starlette/FastAPI request or a ``gr.Request``."""
    client = getattr(request, "client", None)
    return client_key(getattr(client, "host", None))


def client_of_scope(scope: Mapping) -> str:
    client = scope.get("client")
    return client_key(client[0] if client else None)


class ClientAddress:
    """ASGI middleware: the scope's ``client`` becomes the client as :class:`TrustedProxies` says.

    Behind a trusted proxy the scheme it reports (``X-Forwarded-Proto``) is
    taken too, as uvicorn would have.
    """

    def __init__(self, app, proxies: TrustedProxies | None = None):
        self.app = app
        self.proxies = proxies if proxies is not None else TrustedProxies.from_env()

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and self.proxies.enabled:
            peer = scope.get("client")
            if peer:
                forwarded = [
                    value.decode("latin-1")
                    for name, value in scope.get("headers", ())
                    if name == b"x-forwarded-for"
                ]
                address = self.proxies.client_address(peer[0], forwarded)
                if address != peer[0]:
                    scope["client"] = (address, 0)
                    _take_forwarded_scheme(scope)
        await self.app(scope, receive, send)


def _take_forwarded_scheme(scope: dict) -> None:
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-proto":
            proto = value.decode("latin-1").strip().lower()
            if proto in ("http", "https"):
                scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
            return


def keep_uvicorn_out_of_it(environ: MutableMapping[str, str] = os.environ) -> None:
    """Stop uvicorn from rewriting the client from ``X-Forwarded-For`` before we decide.

    Gradio builds uvicorn's ``Config`` without ``forwarded_allow_ips``, so
    uvicorn reads ``FORWARDED_ALLOW_IPS`` (default ``127.0.0.1,::1``): its only
    public knob here. Empty trusts no one; our :class:`ClientAddress` decides.
    """
    previous = environ.get("FORWARDED_ALLOW_IPS")
    if previous:
        log.warning(
            "FORWARDED_ALLOW_IPS is ignored: name the proxies in %s instead", TRUSTED_PROXIES_ENV
        )
    environ["FORWARDED_ALLOW_IPS"] = ""
