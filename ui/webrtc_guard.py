"""What a public page needs around fastrtc's WebRTC component: every slot and session theirs alone.

fastrtc 0.0.34 trusts whoever calls it. This module wraps the methods of the
one ``WebRTC`` instance (a subclass would not do: Gradio finds a component's
frontend by the module that defines its class) to fix, in our code:

- **A garbage offer kept its slot for ever.** fastrtc registers the peer
  connection before it parses the SDP, and arms its 30 s clean-up only after
  parsing (``webrtc_connection_mixin.handle_offer``): a parse error left the
  slot taken, and Gradio answered with a traceback. Offers are checked first,
  and any failure frees the slot and answers a short error.
- **An offer is only let in if it is what a browser sends** (:func:`offer_problem`):
  exactly one audio section (fastrtc starts one handler per incoming track, each
  calling the same session's ``start_up``: 16 sections were 16 pipelines and
  +361 MB), at most one data channel section, ICE credentials and a well-formed
  DTLS fingerprint in every section. Without a fingerprint no DTLS handshake can
  ever complete, yet fastrtc answered and kept the slot.
- **A client could hold slots without talking.** One that never completes ICE
  and DTLS (a wrong fingerprint, no ICE at all) is closed ``handshake_secs``
  after its offer; one that connects without opening the data channel never
  starts the handler, and connecting cancels fastrtc's 30 s timeout; one that
  never sends audio is never closed. A connection that has not become a live,
  audio-sending session within ``admission_secs`` is closed.
- **One client could take every slot, as fast as it liked.** Each client
  (:mod:`ui.clients`: its address, or what a trusted proxy says; IPv6 per /64)
  may hold at most ``per_client`` connections at once (always fewer than the
  slots, ``pipeline.server_settings.ServerSettings.per_client``) and make at most
  ``offers_per_minute`` offers.
- **Actions were authorised by a ``webrtc_id`` the caller supplies** (made with
  ``Math.random()`` in the page). Each connection is bound to the Gradio
  session that offered it; reading its dashboard, pushing settings (and keys)
  into it (its ``tick`` and ``submit`` events), stopping it or exporting it from
  another session is refused.
- **The server's keys are the visitor's, not the connection's:** a handler
  that counts time on them (``VoiceSession.bill_server_keys_to``) is told its
  visitor (client and Gradio session) as it is created.
- **``additional_outputs`` kept an entry per connection for ever** (a
  ``defaultdict`` that a late output re-creates after clean-up), each holding
  that session's final dashboard. Outputs for a closed connection are dropped.
- **A closed connection's peer connection waited for the cyclic GC.** aiortc's
  ``RTCPeerConnection`` and its transports reference each other (event
  listeners), so only the cyclic garbage collector frees them; a full
  collection of this process takes ~300 ms, so Python runs it rarely and then
  stalls every session's audio. The server freezes what it allocated at
  start-up (``gc.freeze()`` in ``ui.layout.launch``), which makes a collection
  cost ~1-2 ms, and collects shortly after each connection closes.
- **A finished session kept its slot until ICE consent expired.** When a
  session ends (its tab closed, so its audio stopped), fastrtc asks the page to
  hang up; a closed tab cannot, and aiortc only noticed ~30 s later. A visitor
  who reloaded twice was refused for half a minute. The connection of a
  finished session is closed ``HANGUP_GRACE_SECS`` after the session ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import ipaddress
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

import gradio as gr
from fastapi.responses import JSONResponse
from fastrtc import WebRTC
from fastrtc.utils import AdditionalOutputs, WebRTCData

from pipeline.compat.asyncio_loop import drop_cancelled_timers
from pipeline.compat.fastrtc import replace_component_methods
from pipeline.compat.gradio import mark_server_fn
from pipeline.telemetry import refused as count_refusal
from ui.clients import client_of
from ui.limits import RateWindow

log = logging.getLogger(__name__)

# The page makes ids like "a1b2c3d4e5"; anything else is not from our page.
WEBRTC_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SDP_BYTES = 64 * 1024
# Connections remembered for ownership checks after they end (exports).
OWNERS_KEPT = 1024
# A closed connection's objects are collected this long after its clean-up
# (its session's shutdown and the peer connection's close finish meanwhile);
# None leaves them to Python's own schedule.
COLLECT_AFTER_CLOSE_SECS: float | None = 2.0
# And once more this long after, if a closed peer connection outlived the first
# collection: a pipeline still winding down on a loaded CPU, or a cancelled timer
# of the connection (aioice's consent check) whose context holds it until its
# time. Skipped otherwise: a full collection stalls every session's loop while
# it runs, and grows with the live sessions' objects.
COLLECT_AGAIN_AFTER_SECS = 10.0
# How often a new connection's progress (handshake, first audio) is looked at.
ADMISSION_POLL_SECS = 0.25
# A live page hangs up itself when told its session ended; this long after, the server does.
HANGUP_GRACE_SECS = 1.0
# aiortc verifies DTLS fingerprints with these digests (rtcdtlstransport), each this many bytes.
FINGERPRINT_BYTES = {"sha-256": 32, "sha-384": 48, "sha-512": 64}
FINGERPRINT = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*$")
# RFC 8839: ice-char is ALPHA / DIGIT / "+" / "/"; ufrag 4-256 of them, pwd 22-256.
ICE_UFRAG = re.compile(r"^[A-Za-z0-9+/]{4,256}$")
ICE_PWD = re.compile(r"^[A-Za-z0-9+/]{22,256}$")
MAX_CANDIDATE_CHARS = 1024
# A browser that hides its address names a host candidate "<uuid>.local" (mDNS).
MDNS_NAME = re.compile(r"^[A-Za-z0-9-]{1,63}\.local$")


@dataclass(frozen=True)
class Owner:
    session_hash: str
    client: str


def refused(error: str, **meta) -> JSONResponse:
    """fastrtc's own shape for a failed offer: the page shows ``meta.error``."""
    return JSONResponse(
        status_code=200, content={"status": "failed", "meta": {"error": error, **meta}}
    )


def webrtc_id_of(value) -> str | None:
    if isinstance(value, WebRTCData):
        value = value.webrtc_id
    return value if isinstance(value, str) and WEBRTC_ID.match(value) else None


class WebRTCGuard:
    """Wraps one WebRTC component; call :meth:`install` before ``stream()`` wires it."""

    def __init__(
        self,
        component: WebRTC,
        *,
        per_client: int,
        admission_secs: float,
        handshake_secs: float,
        offers_per_minute: int,
        balancer_cookie: str | None = None,
    ):
        self.component = component
        self.balancer_cookie = balancer_cookie
        self.per_client = per_client
        self.admission_secs = admission_secs
        self.handshake_secs = handshake_secs
        self.offers = RateWindow(offers_per_minute, 60.0)
        self._owners: OrderedDict[str, Owner] = OrderedDict()
        self._watchers: set[asyncio.Task] = set()
        self._collections: list[asyncio.TimerHandle] = []
        # The closed peer connections the collections are meant to free, until they are.
        self._closed: list[weakref.ref] = []

    # -- ownership -----------------------------------------------------------

    def owns(self, webrtc_id: str | None, session_hash: str | None) -> TypeGuard[str]:
        owner = self._owners.get(webrtc_id) if webrtc_id else None
        return owner is not None and session_hash is not None and owner.session_hash == session_hash

    def _remember(self, webrtc_id: str, owner: Owner) -> None:
        self._owners[webrtc_id] = owner
        while len(self._owners) > OWNERS_KEPT:
            self._owners.popitem(last=False)

    def _held_by(self, client: str) -> int:
        return sum(
            1
            for webrtc_id in list(self.component.pcs)
            if (owner := self._owners.get(webrtc_id)) and owner.client == client
        )

    # -- installation ----------------------------------------------------------

    def install(self) -> None:
        component = self.component
        original_handle_offer = component.handle_offer
        original_set_input = component.set_input
        original_set_input_on_submit = component.set_input_on_submit
        original_clean_up = component.clean_up

        async def offer(body, request: gr.Request):
            return await self._offer(body, request, original_handle_offer)

        async def quit_output_stream(body, request: gr.Request):
            webrtc_id = webrtc_id_of(body.get("webrtc_id")) if isinstance(body, dict) else None
            session_hash = await _session_hash_of(request)
            if webrtc_id and self.owns(webrtc_id, session_hash):
                outputs = component.additional_outputs.get(webrtc_id)
                if outputs is not None:
                    outputs.quit.set()
            return {"success": True}

        def set_input_gradio(request: gr.Request, webrtc_data, *args):
            webrtc_id = webrtc_id_of(webrtc_data)
            if not self.owns(webrtc_id, request.session_hash):
                if webrtc_id in component.connections:
                    log.warning("settings for a connection of another session refused")
                return
            original_set_input(webrtc_id, webrtc_data, *args)

        def set_input_on_submit(request: gr.Request, webrtc_data, *args):
            webrtc_id = webrtc_id_of(webrtc_data)
            owned = self.owns(webrtc_id, request.session_hash)
            if not owned or webrtc_id not in component.handlers:
                return
            original_set_input_on_submit(webrtc_data, *args)

        def set_additional_outputs(webrtc_id: str) -> Callable[[AdditionalOutputs], None]:
            def set_outputs(outputs: AdditionalOutputs) -> None:
                # A closed connection's stream has ended: nobody would read this,
                # and the defaultdict would keep it (and the dashboard) for ever.
                if webrtc_id in component.pcs or webrtc_id in component.additional_outputs:
                    component.additional_outputs[webrtc_id].queue.put_nowait(outputs)

            return set_outputs

        def clean_up(webrtc_id: str):
            pc = component.pcs.get(webrtc_id)
            if pc is not None:
                self._closed.append(weakref.ref(pc))
            connection = original_clean_up(webrtc_id)
            component.additional_outputs.pop(webrtc_id, None)
            self._collect_soon()
            return connection

        replace_component_methods(
            component,
            offer=mark_server_fn(offer),
            quit_output_stream=mark_server_fn(quit_output_stream),
            set_input_gradio=set_input_gradio,
            set_input_on_submit=set_input_on_submit,
            set_additional_outputs=set_additional_outputs,
            clean_up=clean_up,
        )

    def on_additional_outputs(self, fn: Callable, outputs: list) -> None:
        """fastrtc's ``on_additional_outputs``, answering only the session that owns the id."""
        component = self.component

        async def dashboard(request: gr.Request, webrtc_data):
            webrtc_id = webrtc_id_of(webrtc_data)
            if not self.owns(webrtc_id, request.session_hash):
                return
            async for next_outputs in component.output_stream(webrtc_id):
                yield fn(*next_outputs.args)
            component.additional_outputs.pop(webrtc_id, None)

        component.state_change(
            fn=dashboard,
            inputs=[component],
            outputs=outputs,
            concurrency_limit=None,
            show_progress="hidden",
            queue=True,
            trigger_mode="once",
            show_api=False,
        )

    def _collect_soon(self) -> None:
        """Collections shortly after the latest close, and later (several closes share them)."""
        if COLLECT_AFTER_CLOSE_SECS is None:
            return
        for collection in self._collections:
            collection.cancel()
        loop = asyncio.get_running_loop()
        # In a context of its own: the closing connection's context holds
        # fastrtc's current data channel, and through it the peer connection
        # that the collection is meant to free.
        context = contextvars.Context()
        first, again = COLLECT_AFTER_CLOSE_SECS, COLLECT_AFTER_CLOSE_SECS + COLLECT_AGAIN_AFTER_SECS
        self._collections = [
            loop.call_later(first, self._collect, context=context),
            loop.call_later(again, self._collect_if_held, context=context),
        ]

    def _collect_if_held(self) -> None:
        self._closed = [ref for ref in self._closed if ref() is not None]
        if self._closed:
            self._collect()

    def _collect(self) -> None:
        started = time.perf_counter()
        # A cancelled timer made in a closed connection's context would keep
        # that context, and through it the connection, until its due time.
        drop_cancelled_timers(asyncio.get_running_loop())
        freed = gc.collect()
        self._closed = [ref for ref in self._closed if ref() is not None]
        log.debug("collected %d objects in %.1f ms", freed, (time.perf_counter() - started) * 1000)

    # -- offers ------------------------------------------------------------------

    async def _offer(self, body, request, handle_offer):
        component = self.component
        if not isinstance(body, dict):
            return refused("invalid_offer")
        webrtc_id = webrtc_id_of(body.get("webrtc_id"))
        if webrtc_id is None:
            return refused("invalid_offer")
        session_hash = await _session_hash_of(request)
        if not session_hash:
            return refused("invalid_offer")

        if body.get("type") == "ice-candidate":
            if not self.owns(webrtc_id, session_hash) or not isinstance(
                body.get("candidate"), dict
            ):
                return refused("unknown_connection")
            if problem := candidate_problem(body["candidate"]):
                # fastrtc would log its own parse failure with a traceback.
                log.info("refused an ICE candidate: %s", problem)
                return refused("invalid_candidate_format")
            try:
                return await handle_offer(body, component.set_additional_outputs(webrtc_id))
            except Exception as e:
                log.info("an ICE candidate could not be added: %s", type(e).__name__)
                return refused("invalid_candidate_format")

        client = client_of(request)
        if not self.offers.take(client):
            log.info("refused an offer: its client made %d in the last minute", self.offers.limit)
            count_refusal("rate_limited")
            # The page words this one as "Too many concurrent connections. Please try again later!"
            return refused(
                "concurrency_limit_reached",
                rate_limited=True,
                retry_after=round(self.offers.retry_after(client)),
            )
        sdp = body.get("sdp")
        problem = "not an offer" if body.get("type") != "offer" else offer_problem(sdp)
        if problem:
            log.info("refused a WebRTC offer: %s", problem)
            count_refusal("invalid_offer")
            return refused("invalid_offer")
        if webrtc_id in self._owners:
            return refused("connection_already_exists")
        limit = component.concurrency_limit
        if limit is not None and len(component.pcs) >= limit:
            count_refusal("capacity")
            return _expire_cookie(
                refused("concurrency_limit_reached", limit=limit), self.balancer_cookie
            )
        if self._held_by(client) >= self.per_client:
            log.info("refused an offer: its client already holds %d connections", self.per_client)
            count_refusal("per_client")
            # The page words this one as "Too many concurrent connections".
            return refused("concurrency_limit_reached", limit=self.per_client, per_client=True)

        self._remember(webrtc_id, Owner(session_hash, client))
        offered_at = time.monotonic()
        try:
            answer = await handle_offer(
                {"webrtc_id": webrtc_id, "type": "offer", "sdp": sdp},
                component.set_additional_outputs(webrtc_id),
            )
        except Exception as e:
            # fastrtc registered the connection before parsing: free its slot.
            log.info("refused a WebRTC offer that failed to parse: %s", type(e).__name__)
            count_refusal("invalid_offer")
            await self._drop(webrtc_id)
            return refused("invalid_offer")
        if isinstance(answer, dict) and "sdp" in answer:
            bill = getattr(component.handlers.get(webrtc_id), "bill_server_keys_to", None)
            if bill is not None:
                bill((f"client:{client}", f"session:{session_hash}"))
            task = asyncio.create_task(self._admit_or_close(webrtc_id, offered_at))
            self._watchers.add(task)  # held until done: the loop keeps only a weak reference
            task.add_done_callback(self._watchers.discard)
        return answer

    async def _admit_or_close(self, webrtc_id: str, offered_at: float) -> None:
        """Close a connection that is not connected (ICE and DTLS), then sending audio, in time."""
        component = self.component
        while webrtc_id in component.pcs:
            waited = time.monotonic() - offered_at
            pc = component.pcs.get(webrtc_id)
            connected = pc is not None and pc.connectionState == "connected"
            if connected and getattr(component.handlers.get(webrtc_id), "heard_audio", False):
                await self._hang_up_when_finished(webrtc_id)
                return
            if not connected and waited >= self.handshake_secs:
                log.info(
                    "closing a connection whose ICE and DTLS did not complete within %.0fs",
                    self.handshake_secs,
                )
                count_refusal("no_handshake")
                await self._drop(webrtc_id)
                return
            if waited >= self.admission_secs:
                log.info(
                    "closing a connection that sent no audio within %.0fs of its offer",
                    self.admission_secs,
                )
                count_refusal("no_audio")
                await self._drop(webrtc_id)
                return
            await asyncio.sleep(ADMISSION_POLL_SECS)

    async def _hang_up_when_finished(self, webrtc_id: str) -> None:
        """Close the connection once its session has ended, if the page has not hung up."""
        finished = getattr(self.component.handlers.get(webrtc_id), "finished", None)
        if not isinstance(finished, asyncio.Event):
            return
        await finished.wait()
        deadline = time.monotonic() + HANGUP_GRACE_SECS
        while webrtc_id in self.component.pcs and time.monotonic() < deadline:
            await asyncio.sleep(ADMISSION_POLL_SECS)
        if webrtc_id in self.component.pcs:
            log.info("closing the connection of a session that ended (its page did not hang up)")
            await self._drop(webrtc_id)
        # A pipeline can take longer to wind down than the collection after the
        # connection's clean-up waits (on a loaded CPU): collect after it too.
        self._collect_soon()

    async def _drop(self, webrtc_id: str) -> None:
        component = self.component
        pc = component.pcs.get(webrtc_id)
        connections = component.clean_up(webrtc_id)  # pops it from ``pcs``
        for connection in connections or ():
            connection.stop()
        if pc is not None:
            await pc.close()


def _expire_cookie(response: JSONResponse, cookie: str | None) -> JSONResponse:
    """Behind ``python -m deploy``: a visitor this full worker turned away is placed afresh.

    HAProxy pins a visitor to a worker by its cookie, and keeps sending a pinned
    visitor to a full (drained) worker; without the cookie their next page load
    goes to a worker with room, if there is one.
    """
    if cookie:
        response.delete_cookie(cookie, path="/")
    return response


def offer_problem(sdp) -> str | None:
    """Why ``sdp`` is not an offer a browser's fastrtc page would send (None: it is one).

    One audio section, at most one data channel (``application``) section,
    nothing else; ICE credentials and a DTLS fingerprint aiortc can verify
    (a supported digest of the right length) for every section.
    """
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP_BYTES:
        return "not an SDP offer"
    from aiortc.sdp import SessionDescription

    try:
        parsed = SessionDescription.parse(sdp)
    except Exception:
        return "an SDP that does not parse"
    kinds = [media.kind for media in parsed.media]
    if kinds.count("audio") != 1:
        return f"{kinds.count('audio')} audio sections, not one"
    if kinds.count("application") > 1 or set(kinds) - {"audio", "application"}:
        return "sections other than one audio and one data channel"
    for media in parsed.media:
        ice = media.ice
        if not (
            ice
            and ICE_UFRAG.match(ice.usernameFragment or "")
            and ICE_PWD.match(ice.password or "")
        ):
            return "no ICE credentials"
        if not _verifiable_fingerprints(media.dtls.fingerprints if media.dtls else []):
            return "no valid DTLS fingerprint"
    return None


def candidate_problem(candidate: dict) -> str | None:
    """Why a trickled ICE candidate is not one a browser sends (None: it is one).

    As fastrtc reads it: ``candidate:`` then at least ten fields, numbers where
    numbers go, an IP address or an mDNS name; ``sdpMid`` a string,
    ``sdpMLineIndex`` a number, either may be absent.
    """
    text = candidate.get("candidate")
    if not isinstance(text, str) or len(text) > MAX_CANDIDATE_CHARS:
        return "not a candidate line"
    fields = text.split()
    if len(fields) < 10 or not fields[0].startswith("candidate:"):
        return "not a candidate line"
    from aiortc.sdp import candidate_from_sdp

    try:
        parsed = candidate_from_sdp(text.split(":", 1)[1])
    except (AssertionError, ValueError, IndexError):
        return "a candidate that does not parse"
    if not (0 <= parsed.port <= 65535 and 1 <= parsed.component <= 256):
        return "a port or component out of range"
    if not (_ip_address(parsed.ip) or MDNS_NAME.match(parsed.ip)):
        return "neither an address nor an mDNS name"
    mid, index = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    if not (mid is None or isinstance(mid, str)) or not (
        index is None or (isinstance(index, int) and not isinstance(index, bool))
    ):
        return "a malformed media section reference"
    return None


def _ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _verifiable_fingerprints(fingerprints) -> bool:
    """At least one fingerprint aiortc checks, and every one it checks well-formed."""
    checked = [(f.algorithm.lower(), f.value) for f in fingerprints]
    checked = [(algorithm, value) for algorithm, value in checked if algorithm in FINGERPRINT_BYTES]
    return bool(checked) and all(
        FINGERPRINT.match(value) and len(value.split(":")) == FINGERPRINT_BYTES[algorithm]
        for algorithm, value in checked
    )


async def _session_hash_of(request) -> str | None:
    """The Gradio session a component-server call came from (its body carries it).

    Gradio hands a server function the raw FastAPI request, whose body it has
    already read (and Starlette cached).
    """
    session_hash = getattr(request, "session_hash", None)
    if session_hash:
        return session_hash
    try:
        payload = await request.json()
    except Exception:
        return None
    value = payload.get("session_hash") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None
