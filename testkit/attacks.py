"""One determined address against ``python app.py``: the attacks, for the tests and the benchmark.

Every attack speaks the page's own protocol (aiortc offers to fastrtc's
``offer`` server function, Gradio's queue and upload routes) from a loopback
address of its own: Linux routes all of 127.0.0.0/8 to this host, so an
attacker at 127.0.0.5 and a visitor at 127.0.0.6 are two clients to the app,
with no proxy trusted and no header believed. :func:`abuse_target` starts the
app as these attacks expect it (two slots, short windows, a Groq fake holding
the "server's key") and :func:`visitor` is the real visitor who must be
answered during and after each attack: connect (pressing Record again when
refused, if asked to), ask a spoken question, hear the reply.

An attack returns (or, for one that lasts, yields and fills in) a dict of what
the attacker got: counts of answers and refusals, statuses, what the app
showed. The tests assert on it; ``python -m bench abuse`` prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import random
import secrets
import string
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from testkit.app import AppProcess
from testkit.env import fake_provider_env
from testkit.fakes.groq import FakeGroq
from testkit.loop import serving_in_thread
from testkit.webrtc_client import (
    ConnectionLost,
    OfferRefused,
    PageApi,
    WebRTCClient,
    http_session,
    page_api,
    question_audio,
    visitor_address,
)

QUESTION = "What is the capital of France?"
# The Space's own Groq key (the fake takes no other): every visitor starts on it.
SERVER_KEY = "gsk_the_spaces_own_key_0123456789abcdef"
SLOTS = 2
HANDSHAKE_SECS = 3.0
ADMISSION_SECS = 10.0
OFFERS_PER_MINUTE = 12
SERVER_KEY_SECS = 10.0
UPLOAD_MB_PER_CLIENT = 16
UPLOAD_CACHE_MB = 40
MB = 1024 * 1024
# A person pressing Record again after "Too many concurrent connections".
RETRY_SECS = 0.75
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")
HOSTILE_VALUES = ([1, 2, 3], "x" * 100_000, {"a": 1}, -1e308)
# Trickled ICE candidates no browser sends (fastrtc logged each failure with a traceback).
HOSTILE_CANDIDATES = (
    {"candidate": "candidate:1 x udp 1 127.0.0.1 9 typ host generation 0 ufrag x", "sdpMid": "0"},
    {"candidate": "candidate:1 1 udp 1 127.0.0.1 99999999 typ host generation 0 ufrag x"},
    {"candidate": "candidate:1 1 udp 1 evil.example 9 typ host generation 0 ufrag x"},
    {"candidate": "candidate:" + "x " * 2000},
    {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host generation 0 ufrag x", "sdpMid": 7},
)


def abuse_environment(groq: FakeGroq) -> dict[str, str]:
    """The app's settings for these attacks (``VOICE_LAB_MAX_SESSIONS`` is :data:`SLOTS`)."""
    return {
        # As many per client as there are slots: the app must keep one back itself.
        "VOICE_LAB_MAX_SESSIONS_PER_CLIENT": str(SLOTS),
        "VOICE_LAB_HANDSHAKE_SECS": str(HANDSHAKE_SECS),
        "VOICE_LAB_ADMISSION_SECS": str(ADMISSION_SECS),
        "VOICE_LAB_OFFERS_PER_MINUTE": str(OFFERS_PER_MINUTE),
        "VOICE_LAB_SERVER_KEY_SECS": str(SERVER_KEY_SECS),
        "VOICE_LAB_UPLOAD_MB_PER_CLIENT": str(UPLOAD_MB_PER_CLIENT),
        "VOICE_LAB_UPLOAD_CACHE_MB": str(UPLOAD_CACHE_MB),
        **fake_provider_env(groq),
    }


@dataclass
class Target:
    """The running app, its page's ids, the Groq fake behind its key, and fresh client addresses."""

    app: AppProcess
    api: PageApi
    groq: FakeGroq
    _next: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return self.app.url

    def address(self) -> str:
        """A loopback address no client has used yet."""
        return visitor_address(next(self._next))

    def figures(self) -> dict[str, float]:
        """The app's resident memory (MB) and thread count now."""
        status = Path(f"/proc/{self.app.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
            "threads": int(fields["Threads"]),
        }

    def log_tracebacks(self, since: int = 0) -> int:
        log = self.app.log_since(since)
        return sum(log.count(marker) for marker in TRACEBACK_MARKERS[:1])

    def provider_calls(self) -> int:
        """Requests the Groq fake served that a voice turn makes (not model lists)."""
        return sum(len(self.groq.requests_to(e)) for e in ("chat", "transcriptions", "speech"))


@contextlib.asynccontextmanager
async def abuse_target(log_path: Path | None = None) -> AsyncIterator[Target]:
    """``python app.py`` set up for the attacks, with its Groq fake."""
    with serving_in_thread(FakeGroq(api_key=SERVER_KEY)) as groq:
        env = abuse_environment(groq)
        async with AppProcess(log_path, max_sessions=SLOTS, extra_env=env) as app:
            async with http_session() as http:
                api = await page_api(http, app.url)
            yield Target(app, api, groq)


def random_id(k: int = 11) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=k))


@functools.cache
def _question_audio(text: str) -> np.ndarray:
    return question_audio(text)


# -- the real visitor ---------------------------------------------------------------


async def visitor(
    target: Target,
    address: str | None = None,
    *,
    retry_for: float = 0.0,
    session_hash: str | None = None,
    question: str = QUESTION,
    events: bool = False,
) -> dict:
    """A visitor connects, asks ``question`` and listens; returns what they got.

    Refused, they press Record again every :data:`RETRY_SECS` for up to
    ``retry_for`` seconds. ``answered`` is whether a reply was heard;
    ``admitted_after`` the seconds until an offer was let in; ``events`` (if
    asked) the session's exported events.
    """
    address = address or target.address()
    outcome: dict = {"address": address, "answered": False, "voice_to_voice": None}
    async with http_session(address) as http:
        client = WebRTCClient(http, target.url, target.api, name=f"visitor-{address}")
        if session_hash is not None:
            client.session_hash = session_hash
        outcome["session_hash"] = client.session_hash
        refusals: list[dict] = []
        started = time.monotonic()
        try:
            while True:
                try:
                    await client.connect()
                    break
                except OfferRefused as e:
                    refusals.append(e.answer.get("meta") or e.answer)
                    if time.monotonic() - started >= retry_for:
                        return {**outcome, "refusals": refusals}
                    await asyncio.sleep(RETRY_SECS)
            outcome["admitted_after"] = time.monotonic() - started
            await client.wait_until_live()
            heard = await client.turn(question, _question_audio(question))
            outcome["voice_to_voice"] = heard.get("voice_to_voice")
            outcome["answered"] = outcome["voice_to_voice"] is not None
            if events:
                outcome["events"] = await client.export_events()
        except (TimeoutError, ConnectionLost, aiohttp.ClientError) as e:
            outcome["error"] = repr(e)
        finally:
            await client.close()
    return {**outcome, "refusals": refusals}


# -- offers -------------------------------------------------------------------------


async def page_offer(
    http, target: Target, sdp: str, *, webrtc_id: str | None = None, session_hash: str | None = None
) -> dict:
    """POST an offer as the page does; the answer (``sdp``) or refusal (``status: failed``)."""
    body = {
        "data": {"sdp": sdp, "type": "offer", "webrtc_id": webrtc_id or random_id()},
        "component_id": target.api.webrtc_id,
        "fn_name": "offer",
        "session_hash": session_hash or random_id(),
    }
    async with http.post(f"{target.url}/gradio_api/component_server", json=body) as r:
        return {"http_status": r.status, **(await r.json(content_type=None) or {})}


def _mute_track():
    from aiortc.mediastreams import MediaStreamTrack

    class Mute(MediaStreamTrack):
        kind = "audio"

        async def recv(self):
            await asyncio.Event().wait()  # never a frame

    return Mute()


async def aiortc_offer(audio_sections: int = 1, data_channel: bool = True):
    """A real aiortc peer connection and its offer: ``audio_sections`` mute tracks, a channel."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from pipeline.runtime import restrict_ice_to_loopback

    restrict_ice_to_loopback()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for _ in range(audio_sections):
        pc.addTrack(_mute_track())
    if data_channel:
        pc.createDataChannel("text")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _lines(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line]


def without_fingerprint(sdp: str) -> str:
    return "\r\n".join(x for x in _lines(sdp) if not x.startswith("a=fingerprint")) + "\r\n"


def with_fingerprint(sdp: str, fingerprint: str) -> str:
    lines = [
        f"a=fingerprint:{fingerprint}" if x.startswith("a=fingerprint") else x for x in _lines(sdp)
    ]
    return "\r\n".join(lines) + "\r\n"


def without_ice_credentials(sdp: str) -> str:
    kept = [x for x in _lines(sdp) if not x.startswith(("a=ice-ufrag", "a=ice-pwd"))]
    return "\r\n".join(kept) + "\r\n"


def wrong_fingerprint() -> str:
    """A well-formed SHA-256 fingerprint of no certificate: no DTLS handshake can complete."""
    return "sha-256 " + ":".join(f"{b:02X}" for b in secrets.token_bytes(32))


@contextlib.asynccontextmanager
async def lockout_offers(target: Target, interval: float = 0.5) -> AsyncIterator[dict]:
    """One address offers with no DTLS fingerprint, a malformed one, or no ICE, every ``interval``.

    Before the fix each was answered and held a slot for the 10 s admission
    window; two every half second kept every slot taken.
    """
    result: dict = {
        "tried": "offers without/with a malformed DTLS fingerprint or ICE credentials, "
        f"every {interval:g} s from one address",
        "offers": 0,
        "answered": 0,
        "refusals": Counter(),
    }
    attacker = target.address()
    pcs = []
    stop = asyncio.Event()

    async def spam(http) -> None:
        pc, sdp = await aiortc_offer()
        pcs.append(pc)
        variants = itertools.cycle(
            [
                without_fingerprint(sdp),
                with_fingerprint(sdp, "sha-256 00:11:22"),
                without_ice_credentials(sdp),
            ]
        )
        while not stop.is_set():
            answer = await page_offer(http, target, next(variants))
            result["offers"] += 1
            if "sdp" in answer:
                result["answered"] += 1
            else:
                meta = answer.get("meta") or {}
                reason = "rate_limited" if meta.get("rate_limited") else meta.get("error")
                result["refusals"][reason] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async with http_session(attacker) as http:
        task = asyncio.create_task(spam(http))
        try:
            yield result
        finally:
            stop.set()
            await task
            for pc in pcs:
                await pc.close()


@contextlib.asynccontextmanager
async def stuck_handshakes(target: Target, addresses: int = SLOTS) -> AsyncIterator[dict]:
    """Well-formed offers with a wrong fingerprint, one per address, filling every slot.

    Nothing can tell them from a real offer; their ICE and DTLS never
    complete. Before the fix each held its slot for the whole admission window.
    """
    result: dict = {
        "tried": f"{addresses} offers with a well-formed but wrong DTLS fingerprint, "
        "one per address, never connecting",
        "answered": 0,
        "refusals": Counter(),
    }
    pcs = []
    try:
        for _ in range(addresses):
            async with http_session(target.address()) as http:
                pc, sdp = await aiortc_offer()
                pcs.append(pc)
                answer = await page_offer(http, target, with_fingerprint(sdp, wrong_fingerprint()))
            if "sdp" in answer:
                result["answered"] += 1
            else:
                result["refusals"][(answer.get("meta") or {}).get("error")] += 1
        result["held_at"] = time.monotonic()
        yield result
    finally:
        for pc in pcs:
            await pc.close()


async def many_audio_sections(target: Target, sections: int = 16) -> dict:
    """One offer with ``sections`` audio sections, connected as far as the server lets it.

    fastrtc starts a handler per incoming track, each calling the same
    session's ``start_up``: before the fix 16 pipelines, +361 MB, kept after close.
    """
    result: dict = {"tried": f"one offer with {sections} audio sections", "answered": False}
    async with http_session(target.address()) as http:
        pc, sdp = await aiortc_offer(audio_sections=sections)
        try:
            answer = await page_offer(http, target, sdp)
            result["answered"] = "sdp" in answer
            result["error"] = (answer.get("meta") or {}).get("error")
            if result["answered"]:
                from aiortc import RTCSessionDescription

                connected = asyncio.Event()

                @pc.on("connectionstatechange")
                def _state() -> None:
                    if pc.connectionState == "connected":
                        connected.set()

                await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(connected.wait(), 15)
                result["connected"] = connected.is_set()
                await asyncio.sleep(3)  # the handlers start once the data channel is open
        finally:
            await pc.close()
    return result


async def offer_flood(target: Target, offers: int = 30) -> dict:
    """``offers`` offers back to back from one address (refused or not, each costs the server)."""
    result: dict = {
        "tried": f"{offers} offers back to back from one address",
        "refusals": Counter(),
    }
    async with http_session(target.address()) as http:
        _pc, sdp = await aiortc_offer()
        try:
            for _ in range(offers):
                answer = await page_offer(http, target, without_fingerprint(sdp))
                meta = answer.get("meta") or {}
                result["refusals"][
                    "rate_limited" if meta.get("rate_limited") else meta.get("error")
                ] += 1
        finally:
            await _pc.close()
    return result


@contextlib.asynccontextmanager
async def spoofed_connections(target: Target, connections: int = SLOTS) -> AsyncIterator[dict]:
    """Live connections from 127.0.0.1, each claiming another address in ``X-Forwarded-For``.

    uvicorn believes that header from 127.0.0.1 by default; before the fix each
    claim counted as a client of its own, and one client could hold every slot.
    """
    result: dict = {
        "tried": f"{connections} live connections from one address, each claiming another "
        "in X-Forwarded-For",
        "admitted": 0,
        "refusals": [],
    }
    clients: list[WebRTCClient] = []
    async with contextlib.AsyncExitStack() as stack:
        try:
            for i in range(connections):
                claim = {"X-Forwarded-For": f"198.51.100.{i + 1}"}
                http = await stack.enter_async_context(http_session("127.0.0.1", headers=claim))
                client = WebRTCClient(http, target.url, target.api, name=f"spoof-{i}")
                clients.append(client)
                try:
                    await client.connect()
                    await client.wait_until_live()
                    result["admitted"] += 1
                except OfferRefused as e:
                    result["refusals"].append(e.answer.get("meta"))
            yield result
        finally:
            for client in clients:
                await client.close()


# -- the server's keys ----------------------------------------------------------------


async def server_key_reconnects(target: Target) -> dict:
    """A visitor spends their time on the server's key, then reconnects, then reloads the page.

    Before the fix each connection started on the server's key with a fresh budget.
    """
    address = target.address()
    result: dict = {
        "tried": f"spend the {SERVER_KEY_SECS:g} s on the server's key, reconnect on the same "
        "page, then from a new page",
    }
    async with http_session(address) as http:
        first = WebRTCClient(http, target.url, target.api, name="budget")
        try:
            await first.connect()
            await first.wait_until_live()
            deadline = time.monotonic() + SERVER_KEY_SECS + 30
            used_up = False
            while not used_up and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                used_up = _used_up_shown(await first.export_events())
            result["spent"] = used_up
        finally:
            await first.close()
    for name, session_hash in (("same page", first.session_hash), ("new page", None)):
        calls = target.provider_calls()
        seen = await visitor(target, address, session_hash=session_hash, events=True)
        result[name] = {
            "answered": seen["answered"],
            "voice_to_voice": seen["voice_to_voice"],
            "server_key_calls": target.provider_calls() - calls,
            "used_up_shown": _used_up_shown(seen.get("events") or []),
        }
    return result


def _used_up_shown(events: list[dict]) -> bool:
    return any(
        e.get("kind") == "ErrorReported" and "used up" in e.get("message", "") for e in events
    )


# -- uploads --------------------------------------------------------------------------


async def upload(
    http, target: Target, content: bytes, name: str = "session.json"
) -> tuple[int, str]:
    """The page's upload: ``POST /gradio_api/upload``; (status, the path or the refusal)."""
    form = aiohttp.FormData()
    form.add_field("files", content, filename=name, content_type="application/json")
    async with http.post(f"{target.url}/gradio_api/upload", data=form) as r:
        text = await r.text()
        return r.status, (json.loads(text)[0] if r.status == 200 else text)


@contextlib.asynccontextmanager
async def upload_flood(
    target: Target, uploads: int = 40, size: int = 7 * MB
) -> AsyncIterator[dict]:
    """``uploads`` uploads of ``size`` bytes at once from one address (each one allowed)."""
    result: dict = {
        "tried": f"{uploads} concurrent {size / MB:.0f} MB uploads from one address",
        "statuses": Counter(),
        "cache_mb_before": _cache_mb(target),
    }
    async with http_session(target.address()) as http:
        task = asyncio.gather(*(upload(http, target, _filler(size)) for _ in range(uploads)))
        try:
            yield result
        finally:
            for status, _ in await task:
                result["statuses"][status] += 1
            result["cache_mb_after"] = _cache_mb(target)


async def fill_upload_cache(target: Target, size: int = 7 * MB) -> dict:
    """Address after address uploads until the cache refuses (or 20 addresses have tried)."""
    result: dict = {"tried": f"{size / MB:.0f} MB uploads from one address after another"}
    statuses: Counter = Counter()
    for _ in range(20):
        async with http_session(target.address()) as http:
            for _ in range(3):
                status, _ = await upload(http, target, _filler(size))
                statuses[status] += 1
        if statuses[507]:
            break
    result["statuses"] = statuses
    result["cache_mb"] = _cache_mb(target)
    return result


def _filler(size: int) -> bytes:
    """``size`` bytes no other upload has (Gradio stores identical uploads once)."""
    return secrets.token_hex(16).encode() + b" " * (size - 32)


def _cache_mb(target: Target) -> float:
    total = 0
    for root, _dirs, files in os.walk(target.app.upload_dir):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total / MB


def session_file() -> bytes:
    """A real (tiny) exported session, as a visitor would replay it."""
    from pipeline import events as ev
    from ui import export

    events = [
        ev.SessionStarted(0.0),
        ev.UserTurnText(1.0, "Hello there"),
        ev.BotTurnText(2.0, "Hi! How can I help?"),
    ]
    return json.dumps(export.export_session(events)).encode()


async def visitor_replay(target: Target, address: str | None = None) -> dict:
    """A visitor replays a session file: upload, the replay event, its result from the queue."""
    outcome: dict = {"replayed": False}
    async with http_session(address or target.address()) as http:
        status, path = await upload(http, target, session_file())
        outcome["upload_status"] = status
        if status != 200:
            return outcome
        config = await (await http.get(f"{target.url}/config")).json()
        button = next(
            c["id"]
            for c in config["components"]
            if c.get("type") == "uploadbutton"
            and c.get("props", {}).get("label") == "Replay a session file"
        )
        fn_index = next(
            d["id"] for d in config["dependencies"] if [button, "upload"] in d["targets"]
        )
        file = {
            "path": path,
            "orig_name": "session.json",
            "meta": {"_type": "gradio.FileData"},
        }
        completed = await queue_event(http, target, fn_index, [file], random_id())
        outcome["replayed"] = bool(completed and completed.get("success"))
        outcome["file_left"] = os.path.exists(path)
    return outcome


# -- the queue ------------------------------------------------------------------------


async def join(http, target: Target, fn_index: int, data: list, session_hash: str) -> int:
    body = {"data": data, "event_data": None, "fn_index": fn_index, "session_hash": session_hash}
    async with http.post(f"{target.url}/gradio_api/queue/join", json=body) as r:
        await r.read()
        return r.status


async def queue_event(
    http, target: Target, fn_index: int, data: list, session_hash: str
) -> dict | None:
    """Join the queue as the page does; the event's result from its stream (None: refused)."""
    if await join(http, target, fn_index, data, session_hash) != 200:
        return None
    url = f"{target.url}/gradio_api/queue/data?session_hash={session_hash}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=60)) as r:
        async for line in r.content:
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    return None


@contextlib.asynccontextmanager
async def queue_flood(target: Target, joins: int = 150) -> AsyncIterator[dict]:
    """``joins`` requests queued at once from one address (the export button, a queued event)."""
    result: dict = {
        "tried": f"{joins} concurrent queue joins from one address",
        "statuses": Counter(),
    }
    value = [{"textbox": "", "webrtc_id": random_id()}]
    async with http_session(target.address()) as http:
        task = asyncio.gather(
            *(join(http, target, target.api.export_fn, value, random_id()) for _ in range(joins))
        )
        try:
            yield result
        finally:
            result["statuses"].update(await task)


async def visitor_queued(target: Target, address: str | None = None) -> dict:
    """A visitor presses Export: is the request queued and answered?"""
    async with http_session(address or target.address()) as http:
        started = time.monotonic()
        value = [{"textbox": "", "webrtc_id": random_id()}]
        completed = await queue_event(http, target, target.api.export_fn, value, random_id())
        return {"answered": completed is not None, "seconds": time.monotonic() - started}


# -- hostile requests -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def hostile_requests(target: Target) -> AsyncIterator[dict]:
    """Every event of the page fed ill-typed inputs, unknown components, the API's route list."""
    result: dict = {"tried": "", "requests": 0, "statuses": Counter()}

    async def attack(http) -> None:
        config = await (await http.get(f"{target.url}/config")).json()
        dependencies = config["dependencies"]
        result["tried"] = (
            f"{len(HOSTILE_VALUES)} ill-typed inputs to each of the page's {len(dependencies)} "
            "events, calls to unknown components and functions, malformed ICE candidates, "
            "/openapi.json"
        )
        for dependency in dependencies:
            for value in HOSTILE_VALUES:
                data = [value] * len(dependency["inputs"])
                completed = await queue_event(http, target, dependency["id"], data, random_id())
                result["requests"] += 1
                result["statuses"]["answered" if completed else "refused"] += 1
        for body in (
            {"data": {}, "component_id": 99999, "fn_name": "offer", "session_hash": "x"},
            {
                "data": {},
                "component_id": target.api.webrtc_id,
                "fn_name": "nope",
                "session_hash": "x",
            },
            {"data": {}, "component_id": "x", "fn_name": "offer", "session_hash": "x"},
        ):
            async with http.post(f"{target.url}/gradio_api/component_server", json=body) as r:
                result["requests"] += 1
                result["statuses"][f"component_server {r.status}"] += 1
        for path in ("/openapi.json", "/gradio_api/openapi.json", "/docs"):
            async with http.get(target.url + path) as r:
                result["requests"] += 1
                result[path] = r.status
        # A queued event posted directly, past the queue (the A/B run: two pipelines' work).
        run = {"data": [None] * 3, "session_hash": random_id()}
        async with http.post(f"{target.url}/gradio_api/run/on_click", json=run) as r:
            result["requests"] += 1
            result["run past the queue"] = r.status
        await hostile_candidates(http)

    async def hostile_candidates(http) -> None:
        # ICE candidates are only taken for one's own connection: make one first.
        pc, sdp = await aiortc_offer()
        webrtc_id, session_hash = random_id(), random_id()
        try:
            answer = await page_offer(
                http, target, sdp, webrtc_id=webrtc_id, session_hash=session_hash
            )
            if "sdp" not in answer:
                return
            for candidate in HOSTILE_CANDIDATES:
                body = {
                    "data": {
                        "type": "ice-candidate",
                        "webrtc_id": webrtc_id,
                        "candidate": candidate,
                    },
                    "component_id": target.api.webrtc_id,
                    "fn_name": "offer",
                    "session_hash": session_hash,
                }
                async with http.post(f"{target.url}/gradio_api/component_server", json=body) as r:
                    reply = await r.json(content_type=None) or {}
                result["requests"] += 1
                result["statuses"][f"candidate {(reply.get('meta') or {}).get('error')}"] += 1
        finally:
            await pc.close()

    async with http_session(target.address()) as http:
        task = asyncio.create_task(attack(http))
        try:
            yield result
        finally:
            await task


# -- tools ----------------------------------------------------------------------------


async def non_object_tool_arguments(target: Target, arguments=(1, 2, 3, 4)) -> dict:
    """The LLM (talked into it by a visitor) calls a tool with arguments that are not an object."""
    arguments = list(arguments)
    result: dict = {"tried": f"a tool call with arguments {json.dumps(arguments)} (not an object)"}
    original = target.groq.choose_tools
    target.groq.choose_tools = lambda _text, _tools: [("lookup_order", arguments)]
    try:
        seen = await visitor(target, events=True)
    finally:
        target.groq.choose_tools = original
    events = seen.pop("events", None) or []
    finished = [e for e in events if e.get("kind") == "ToolCallFinished"]
    spoken = " ".join(e.get("text", "") for e in events if e.get("kind") == "BotTurnText")
    return {
        **result,
        **seen,
        "tool_cards": [(e["name"], e["ok"]) for e in finished],
        "apology_spoken": "Sorry, I couldn't reach the order system" in spoken,
        "errors": [e["message"] for e in events if e.get("kind") == "ErrorReported"],
    }
