"""TURN relay credentials for WebRTC, kept fresh without ever blocking start-up.

Locally no STUN/TURN server is contacted at all. Two kinds of relay:

- **Your own TURN server** (coturn; ``python -m deploy --turn`` runs one):
  ``VOICE_LAB_TURN_URLS`` lists its ``turn:`` URLs, and either
  ``VOICE_LAB_TURN_SECRET`` (coturn's ``use-auth-secret``: short-lived
  credentials made here with the shared secret, the "TURN REST API" scheme) or
  a fixed ``VOICE_LAB_TURN_USERNAME`` / ``VOICE_LAB_TURN_CREDENTIAL``.
- **Cloudflare's**, through fastrtc's helper: on a Space (``SPACE_ID`` and
  ``HF_TOKEN`` set) or with ``VOICE_LAB_TURN=cloudflare``.

Both the browser and the server get the servers. ``VOICE_LAB_TURN_POLICY=relay``
makes the browser use the relay only (``iceTransportPolicy``): every call is
relayed, and the browser's own addresses are never offered.

A background thread fetches the credentials, retries with back-off while that
fails, and renews them well before they expire; until it succeeds the app
serves without a relay and the page says that visitors behind strict NATs may
not connect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable

from pipeline import redaction
from pipeline.server_settings import ServerSettings

log = logging.getLogger(__name__)

TTL_SECS = 6 * 3600
RENEW_AT = 0.75  # of the TTL
RETRY_SECS = (2.0, 5.0, 15.0, 30.0, 60.0)

Fetch = Callable[[int], dict]


def relay_source(settings: ServerSettings) -> Fetch | None:
    """Where this server's TURN credentials come from (None: no relay); your own server first."""
    urls = list(settings.turn_urls)
    if urls:
        secret = settings.turn_secret.get_secret_value() if settings.turn_secret else ""
        credential = settings.turn_credential.get_secret_value() if settings.turn_credential else ""
        redaction.remember(secret, credential)
        if secret:
            return lambda ttl: shared_secret_credentials(urls, secret, ttl)
        username = settings.turn_username or ""
        return lambda _ttl: {
            "iceServers": [{"urls": urls, "username": username, "credential": credential}]
        }
    if settings.turn == "cloudflare":
        return _fastrtc_fetch
    return None


def shared_secret_credentials(urls: list[str], secret: str, ttl: int) -> dict:
    """Time-limited TURN credentials for a coturn server run with ``use-auth-secret``.

    The username is the expiry time (Unix seconds); the password is the
    base64 HMAC-SHA1 of the username under the shared secret, which coturn
    checks without any call back to us.
    """
    username = f"{int(time.time()) + ttl}:voice-lab"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    credential = base64.b64encode(digest).decode()
    return {"iceServers": [{"urls": urls, "username": username, "credential": credential}]}


def relay_policy(settings: ServerSettings) -> str | None:
    """``relay``: the browser uses the relay only (``VOICE_LAB_TURN_POLICY``)."""
    return "relay" if settings.turn_policy == "relay" else None


def _fastrtc_fetch(ttl: int) -> dict:
    from fastrtc import get_cloudflare_turn_credentials

    return get_cloudflare_turn_credentials(ttl=ttl)


class TurnServerCredentials:
    """The current TURN credentials (or why there are none), kept fresh by a daemon thread."""

    def __init__(
        self,
        fetch: Fetch = _fastrtc_fetch,
        ttl: int = TTL_SECS,
        retry_secs: tuple[float, ...] = RETRY_SECS,
        policy: str | None = None,
    ):
        self._fetch = fetch
        self._policy = policy
        self._ttl = ttl
        self._retry_secs = retry_secs
        self._lock = threading.Lock()
        self._servers: dict | None = None
        self.error: str | None = "not fetched yet"
        self.fetched_at: float | None = None
        self.listeners: list[Callable[[dict], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def servers(self) -> dict | None:
        with self._lock:
            return self._servers

    def start(self) -> TurnServerCredentials:
        self._thread = threading.Thread(target=self._run, name="turn-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> bool:
        """One fetch; True when fresh credentials are in place."""
        try:
            servers = self._fetch(self._ttl)
            if not isinstance(servers, dict) or not isinstance(servers.get("iceServers"), list):
                raise ValueError("the credentials service answered without iceServers")
        except Exception as e:
            with self._lock:
                self.error = f"{type(e).__name__}: {e}"[:200]
            log.warning("TURN relay credentials unavailable: %s", self.error)
            return False
        with self._lock:
            self._servers, self.error, self.fetched_at = servers, None, time.time()
        log.info("TURN relay credentials fetched (%d servers)", len(servers["iceServers"]))
        for listener in self.listeners:
            listener(servers)
        return True

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self.refresh():
                failures = 0
                wait = self._ttl * RENEW_AT
            else:
                wait = self._retry_secs[min(failures, len(self._retry_secs) - 1)]
                failures += 1
            self._stop.wait(wait)

    def browser_configuration(self) -> dict:
        """What the page's RTCPeerConnection gets: the relay, or nothing while there is none."""
        servers = self.servers
        if servers is None:
            return {}
        return {**servers, "iceTransportPolicy": self._policy} if self._policy else servers

    def notice(self) -> str:
        """Plain words for the page while the relay is missing (empty once it works)."""
        if self.servers is not None:
            return ""
        return (
            "The WebRTC relay (TURN) is unavailable right now, so visitors behind strict "
            "firewalls or NATs may fail to connect. The server keeps retrying."
        )
