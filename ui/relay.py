"""TURN relay credentials for WebRTC on a Space, fetched without ever blocking start-up.

Locally no STUN/TURN server is contacted at all. On a Space (``SPACE_ID`` and
``HF_TOKEN`` set) or with ``VOICE_LAB_TURN=cloudflare``, both the browser and
the server get TURN credentials through fastrtc's Cloudflare helper.

That call used to run while the page was built: a bad or expired token, the
endpoint down or no network made ``python app.py`` exit, and the Space
crash-looped. The credentials were also fetched once for 100 hours and never
renewed. Now a background thread fetches them, retries with back-off while it
fails, and renews them well before they expire; until it succeeds the app
serves without a relay and the page says that visitors behind strict NATs may
not connect.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TTL_SECS = 6 * 3600
RENEW_AT = 0.75  # of the TTL
RETRY_SECS = (2.0, 5.0, 15.0, 30.0, 60.0)

Fetch = Callable[[int], dict]


def relay_wanted() -> bool:
    return os.environ.get("VOICE_LAB_TURN", "").lower() == "cloudflare" or bool(
        os.environ.get("SPACE_ID") and os.environ.get("HF_TOKEN")
    )


def _fastrtc_fetch(ttl: int) -> dict:
    from fastrtc import get_cloudflare_turn_credentials

    return get_cloudflare_turn_credentials(ttl=ttl)


class TurnRelay:
    """The current TURN credentials (or why there are none), kept fresh by a daemon thread."""

    def __init__(
        self,
        fetch: Fetch = _fastrtc_fetch,
        ttl: int = TTL_SECS,
        retry_secs: tuple[float, ...] = RETRY_SECS,
    ):
        self._fetch = fetch
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

    def start(self) -> TurnRelay:
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
        return self.servers or {}

    def notice(self) -> str:
        """Plain words for the page while the relay is missing (empty once it works)."""
        if self.servers is not None:
            return ""
        return (
            "The WebRTC relay (TURN) is unavailable right now, so visitors behind strict "
            "firewalls or NATs may fail to connect. The server keeps retrying."
        )
