"""coturn's configuration: a TURN relay for calls whose media cannot reach a worker directly.

WebRTC media goes straight from the browser to the worker that answered the
offer, over UDP. Where the workers' UDP ports are not reachable (a container
that publishes only its HTTP port, workers behind NAT, visitors behind strict
firewalls), both sides relay through TURN. coturn checks the short-lived
credentials the app makes with the shared secret (``use-auth-secret``, see
:func:`ui.relay.shared_secret_credentials`), so nothing else is shared.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TurnServer:
    listen_ip: str
    port: int
    secret: str
    realm: str = "voice-lab"
    # The address visitors reach this relay at, when it is behind NAT (a cloud VM's public IP).
    external_ip: str | None = None
    # UDP ports coturn relays media on (publish them too, in a container).
    min_port: int = 49160
    max_port: int = 49200

    @property
    def urls(self) -> list[str]:
        host = self.external_ip or self.listen_ip
        host = f"[{host}]" if ":" in host else host
        return [f"turn:{host}:{self.port}?transport=udp", f"turn:{host}:{self.port}?transport=tcp"]

    def app_environment(self) -> dict[str, str]:
        """What each worker needs to hand out (and use) this relay."""
        return {"VOICE_LAB_TURN_URLS": ",".join(self.urls), "VOICE_LAB_TURN_SECRET": self.secret}


def configuration(turn: TurnServer, run_dir: Path) -> str:
    """``turnserver.conf`` for ``turn``; its pid file and database live in ``run_dir``."""
    loopback = ipaddress.ip_address(turn.listen_ip).is_loopback
    lines = [
        f"listening-ip={turn.listen_ip}",
        f"listening-port={turn.port}",
        f"relay-ip={turn.listen_ip}",
        *([f"external-ip={turn.external_ip}"] if turn.external_ip else []),
        f"min-port={turn.min_port}",
        f"max-port={turn.max_port}",
        f"realm={turn.realm}",
        "use-auth-secret",
        f"static-auth-secret={turn.secret}",
        "fingerprint",
        "no-cli",
        "no-tls",
        "no-dtls",
        "no-multicast-peers",
        # On loopback (tests, a single box) the workers are loopback peers too.
        *(["allow-loopback-peers"] if loopback else ["no-loopback-peers"]),
        f"userdb={run_dir / 'turndb'}",
        f"pidfile={run_dir / 'turnserver.pid'}",
        "log-file=stdout",
        "simple-log",
    ]
    return "\n".join(lines) + "\n"
