"""A client of the page's WebRTC protocol, as fastrtc's component speaks it: aiortc, no browser.

Each :class:`WebRTCClient` talks to ``python app.py`` exactly as the page does:

1. ``POST /gradio_api/component_server`` with ``fn_name="turn"`` (the page asks
   for its ICE configuration first), then ``fn_name="offer"`` with
   ``{"sdp", "type": "offer", "webrtc_id"}``: fastrtc's ``WebRTC.offer``
   server function. The answer is the server's SDP, or HTTP 200 with
   ``{"status": "failed", "meta": {"error": "concurrency_limit_reached",
   "limit": N}}`` when ``VOICE_LAB_MAX_SESSIONS`` connections are already open
   (the page then shows "Too many concurrent connections. Please try again
   later!").
2. The offer carries one send-receive audio track (Opus, 48 kHz, 20 ms frames)
   and a data channel labelled ``"text"``, on which the client says
   ``"handshake"`` once it opens. Without the channel fastrtc never starts the
   handler. On it the server sends JSON ``{"type", "data"}`` messages:
   ``send_input`` (the session asks for the page's settings: the page answers
   with its ``tick`` event, here ``POST /gradio_api/queue/join`` with the
   dependency that targets the WebRTC component's ``tick``, data
   ``[{"textbox": "", "webrtc_id": id}, null]``; the settings ``gr.State`` is
   filled in server-side from this Gradio session), ``fetch_output`` (UI
   updates are waiting: the page starts its ``state_change`` event once, which
   streams the dashboard over the queue's SSE stream, ``GET
   /gradio_api/queue/data``, for the rest of the connection), ``end_stream``,
   ``log``, ``warning`` and ``error``.
3. On leaving, ``fn_name="quit_output_stream"`` and the peer connection is closed.

ICE stays on 127.0.0.1: the app runs with ``VOICE_LAB_LOOPBACK_ICE=1`` and this
process applies the same aioice patch (``pipeline.runtime.restrict_ice_to_loopback``);
``RTCConfiguration(iceServers=[])`` keeps aiortc from its default public STUN server.

The microphone is real-time (20 ms 48 kHz frames; silence unless told to
speak), and the ear records the arrival time and RMS of every decoded 20 ms
frame of the reply, so :meth:`WebRTCClient.turn` measures voice-to-voice as
a listener hears it: from the last frame of the question leaving the
microphone track (handed to the Opus encoder) to the first *audible* (RMS >=
``AUDIBLE_RMS``) frame of the reply decoded, including RTP/Opus both ways,
fastrtc's queues and pacing, and aiortc's receive jitter buffer (it releases
an audio frame once 4 later ones have arrived: ~80 ms, in the range of a
browser's NetEq, which adapts). A reply is over after ``REPLY_QUIET_SECS``
with nothing audible.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import random
import string
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATE = 48000
FRAME_SECS = 0.02
FRAME_SAMPLES = int(SAMPLE_RATE * FRAME_SECS)
# A decoded 20 ms frame at or above this RMS (int16 scale, ~ -50 dBFS) is "audible".
AUDIBLE_RMS = 100.0
# A reply is over once nothing audible arrived for this long.
REPLY_QUIET_SECS = 1.5
TURN_TIMEOUT = 40.0
CONNECT_TIMEOUT = 30.0
# Beyond its own length, how long speech may take to leave the microphone: a
# microphone whose frames stop being pulled (the connection went) never finishes.
SPEAK_SLACK_SECS = 10.0
# How long leaving may take (the server's quit answer; the peer connection's close).
CLOSE_TIMEOUT = 5.0
EXPORT_BUTTON = "export-button"
TRACE_BUTTON = "trace-button"
# A microphone sample above this (int16) is voice: the end of a question is its last one.
VOICE_LEVEL = 300
# Quiet this long after an interrupted reply's last audible frame: it stopped (the
# answer to the interruption is further off).
BARGE_IN_QUIET_SECS = 0.3


def _loopback_only() -> None:
    """The app's own aioice patch: offer and accept nothing but 127.0.0.1."""
    from pipeline.runtime import restrict_ice_to_loopback

    restrict_ice_to_loopback()


@dataclass(frozen=True)
class PageApi:
    """What the page's JavaScript knows from ``/config``: component and event ids."""

    webrtc_id: int
    tick_fn: int
    state_change_fn: int
    # The "Export session" button's click (None: a page without one).
    export_fn: int | None = None
    # The speech-to-text provider dropdown's input (None: a page without one).
    stt_provider_fn: int | None = None
    # The "Download trace" button's click (None: a page without one).
    trace_fn: int | None = None


async def page_api(http, base_url: str) -> PageApi:
    async with http.get(f"{base_url}/config") as r:
        config = await r.json()
    webrtc = next(c["id"] for c in config["components"] if c.get("type") == "webrtc")

    def dependency(event: str) -> int:
        for dep in config["dependencies"]:
            if [webrtc, event] in [list(t) for t in dep["targets"]]:
                return dep["id"]
        raise LookupError(f"no {event} event on the WebRTC component")

    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}

    def event_of(elem_id: str, event: str) -> int | None:
        target = [ids.get(elem_id), event]
        return next(
            (d["id"] for d in config["dependencies"] if target in map(list, d["targets"])), None
        )

    return PageApi(
        webrtc,
        dependency("tick"),
        dependency("state_change"),
        event_of(EXPORT_BUTTON, "click"),
        event_of("stt-provider", "input"),
        event_of(TRACE_BUTTON, "click"),
    )


# --------------------------------------------------------------------------- audio


def _to_48k(pcm16k: np.ndarray, rate: int = 16000) -> np.ndarray:
    import soxr

    audio = soxr.resample(pcm16k.astype(np.float32) / 32768, rate, SAMPLE_RATE)
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def question_audio(text: str) -> np.ndarray:
    """``text`` spoken by Piper (:mod:`testkit.speech`, 16 kHz) resampled to 48 kHz for Opus."""
    from testkit.speech import speech_pcm

    return _to_48k(speech_pcm(text))


def _microphone_track_class():
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
    from av import AudioFrame

    class Microphone(MediaStreamTrack):
        """A real-time microphone: 20 ms 48 kHz mono frames, silence unless told to speak."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._queue: list[tuple[np.ndarray, asyncio.Future]] = []
            self._offset = 0
            self._start: float | None = None
            self._pts = 0
            self.late_frames = 0  # frames handed out >20 ms behind schedule (client overload)

        def say(self, samples: np.ndarray) -> asyncio.Future:
            """Queue speech; the future resolves to when its last frame left the track."""
            done = asyncio.get_running_loop().create_future()
            self._queue.append((samples, done))
            return done

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            now = time.monotonic()
            if self._start is None:
                self._start = now
            else:
                wait = self._start + self._pts / SAMPLE_RATE - now
                if wait > 0:
                    await asyncio.sleep(wait)
                elif wait < -FRAME_SECS:
                    self.late_frames += 1
            chunk = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            finished: asyncio.Future | None = None
            if self._queue:
                samples, done = self._queue[0]
                piece = samples[self._offset : self._offset + FRAME_SAMPLES]
                chunk[: len(piece)] = piece
                self._offset += FRAME_SAMPLES
                if self._offset >= len(samples):
                    self._queue.pop(0)
                    self._offset = 0
                    finished = done
            frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
            frame.planes[0].update(chunk.tobytes())
            frame.pts = self._pts
            frame.sample_rate = SAMPLE_RATE
            frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
            self._pts += FRAME_SAMPLES
            if finished is not None and not finished.done():
                finished.set_result(time.monotonic())
            return frame

    return Microphone


@dataclass
class Heard:
    """Arrival time and RMS of every decoded 20 ms frame of the remote track.

    aiortc's receive jitter buffer hands out a frame once 4 later packets have
    arrived, so the last 4 frames of a reply come out only when the next reply's
    first packets arrive: decoded *after* the question, though sent before it.
    ``sent_at`` (per frame: when its RTP packet arrived, found by its ``pts``,
    which aiortc counts from the first packet's RTP timestamp) tells them apart.
    """

    frames: list[tuple[float, float]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    sent_at: list[float | None] = field(default_factory=list)
    packets: dict[int, float] = field(default_factory=dict)

    def first_audible_sent_after(self, t: float, start: int = 0) -> int | None:
        """Index of the first audible frame whose packet arrived at or after ``t``."""
        for index in range(start, len(self.frames)):
            arrival, rms = self.frames[index]
            packet = self.sent_at[index]
            if (arrival if packet is None else packet) >= t and rms >= AUDIBLE_RMS:
                return index
        return None

    def last_audible(self, start: int = 0) -> float | None:
        for arrival, rms in reversed(self.frames[start:]):
            if rms >= AUDIBLE_RMS:
                return arrival
        return None


# --------------------------------------------------------------------------- one client


class ConnectionLost(Exception):
    """The peer connection failed or closed under a client that was still talking."""


class OfferRefused(Exception):
    def __init__(self, answer: dict, seconds: float):
        super().__init__(f"offer refused: {answer}")
        self.answer = answer
        self.seconds = seconds


PAGE_MESSAGES = {
    # What fastrtc's page component shows for each refusal (from its index.svelte).
    "concurrency_limit_reached": "Too many concurrent connections. Please try again later!",
    "connection_already_exists": "Connection already exists",
}


def _voice_onset_secs(audio: np.ndarray) -> float:
    loud = np.flatnonzero(np.abs(audio) > VOICE_LEVEL)
    return loud[0] / SAMPLE_RATE if len(loud) else 0.0


def _trailing_silence_secs(audio: np.ndarray) -> float:
    """How long ``audio`` (48 kHz) goes on after its last voiced sample."""
    voiced = np.flatnonzero(np.abs(audio) > VOICE_LEVEL)
    return (len(audio) - (voiced[-1] + 1 if len(voiced) else 0)) / SAMPLE_RATE


def _audio_codec(sdp: str) -> str | None:
    """The audio codec an SDP answer settled on (its first payload type on the m=audio line)."""
    payload = None
    for line in sdp.splitlines():
        if line.startswith("m=audio"):
            parts = line.split()
            payload = parts[3] if len(parts) > 3 else None
        elif payload and line.startswith(f"a=rtpmap:{payload} "):
            return line.split(" ", 1)[1]
    return None


class WebRTCClient:
    """One visitor: a Gradio session, a peer connection, a microphone and an ear."""

    def __init__(
        self, http, base_url: str, api: PageApi, name: str = "client", dashboard: bool = True
    ):
        from aiortc import RTCConfiguration

        _loopback_only()
        self.http = http
        self.base_url = base_url
        self.api = api
        self.name = name
        alphabet = string.ascii_lowercase + string.digits
        self.session_hash = "".join(random.choices(alphabet, k=11))
        self.webrtc_id = "".join(random.choices(alphabet, k=11))
        self.mic = _microphone_track_class()()
        self._created = time.monotonic()
        self._new_peer_connection(RTCConfiguration(iceServers=[]))
        self.heard = Heard()
        self.messages: list[dict] = []
        self.connected = asyncio.Event()
        # Set once the peer connection fails or closes; ``lost`` says how and when.
        self.gone = asyncio.Event()
        self.lost: str | None = None
        self.settings_sent = asyncio.Event()
        self.outputs_seen = asyncio.Event()
        self.ended: str | None = None
        self.offer_seconds: float | None = None
        # The worker that served the page (X-Voice-Lab-Worker), once it is loaded.
        self.page_worker: str | None = None
        self._tasks: list[asyncio.Task] = []
        # False: never start the page's dashboard stream (what the UI rendering costs).
        self._dashboard_started = not dashboard
        self._offer_sdp: str | None = None
        self._stream: asyncio.Task | None = None
        self.codec: str | None = None
        self.queue_messages: dict[str, int] = {}
        # time.time() - time.monotonic(): the client's times on the server's event clock.
        self.clock_offset = time.time() - time.monotonic()
        self._completed: dict[str, dict] = {}
        self._completion = asyncio.Event()
        self._page_loaded = False

    def _new_peer_connection(self, configuration) -> None:
        """The page's RTCPeerConnection: one audio track, the "text" data channel."""
        from aiortc import RTCPeerConnection

        self.pc = RTCPeerConnection(configuration)
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("text")

        @self.channel.on("open")
        def _on_open():
            self.channel.send("handshake")

        @self.channel.on("message")
        def _on_message(message):
            self._on_channel_message(message)

        @self.pc.on("track")
        def _on_track(track):
            if track.kind == "audio":
                self._spawn(self._listen(track), "listen")

        pc = self.pc

        @pc.on("connectionstatechange")
        def _on_state():
            if pc is not self.pc:  # the unused first connection (a TURN config replaced it)
                return
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed") and not self.gone.is_set():
                self.lost = (
                    f"peer connection {pc.connectionState} (ICE {pc.iceConnectionState})"
                    f" after {time.monotonic() - self._created:.1f} s"
                )
                self.gone.set()

    def _spawn(self, coro, label: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"{self.name}-{label}"))

    @property
    def value(self) -> dict:
        """The WebRTC component's value as the page sends it with its events."""
        return {"textbox": "", "webrtc_id": self.webrtc_id}

    # -- signalling -------------------------------------------------------

    async def _server_fn(self, fn_name: str, data: Any) -> tuple[int, Any]:
        body = {
            "data": data,
            "component_id": self.api.webrtc_id,
            "fn_name": fn_name,
            "session_hash": self.session_hash,
        }
        async with self.http.post(f"{self.base_url}/gradio_api/component_server", json=body) as r:
            return r.status, await r.json(content_type=None)

    async def _join(self, fn_index: int, data: list) -> str | None:
        body = {
            "data": data,
            "event_data": None,
            "fn_index": fn_index,
            "trigger_id": self.api.webrtc_id,
            "session_hash": self.session_hash,
        }
        async with self.http.post(f"{self.base_url}/gradio_api/queue/join", json=body) as r:
            r.raise_for_status()
            event_id = (await r.json(content_type=None)).get("event_id")
        # As Gradio's JS client: an SSE stream per session while it has events
        # pending (it closes itself once they have all completed).
        if self._stream is None or self._stream.done():
            self._stream = asyncio.create_task(self._queue_stream(), name=f"{self.name}-sse")
            self._tasks.append(self._stream)
        return event_id

    async def _queue_stream(self) -> None:
        """The page's SSE stream: dashboard updates arrive (and are dropped) here."""
        import aiohttp

        url = f"{self.base_url}/gradio_api/queue/data?session_hash={self.session_hash}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
            async with self.http.get(url, timeout=timeout) as r:
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    with contextlib.suppress(ValueError):
                        message = json.loads(line[5:])
                        msg = str(message.get("msg"))
                        self.queue_messages[msg] = self.queue_messages.get(msg, 0) + 1
                        if msg == "process_completed":
                            self._completed[str(message.get("event_id"))] = message
                            self._completion.set()
                        if msg == "close_stream":
                            return

    async def load_page(self) -> None:
        """``GET /`` as a browser opening the page does: behind a balancer, it pins the worker.

        HAProxy sets its cookie on this first response; the session's cookie jar
        sends it with every request after (one jar per visitor: see :func:`http_session`).
        """
        async with self.http.get(f"{self.base_url}/") as r:
            r.raise_for_status()
            self.page_worker = r.headers.get("X-Voice-Lab-Worker")
            await r.read()
        self._page_loaded = True

    async def connect(self) -> None:
        """The page's Record button: ICE config, offer, answer; raises OfferRefused.

        As the page does, the peer connection takes the ICE servers (a TURN
        relay) and the transport policy the server's ``turn`` answer names.
        """
        from aiortc import (
            RTCConfiguration,
            RTCIceServer,
            RTCIceTransportPolicy,
            RTCSessionDescription,
        )

        if not self._page_loaded:
            await self.load_page()
        status, config = await self._server_fn("turn", {})
        servers = config.get("iceServers") if isinstance(config, dict) else None
        if servers and self._offer_sdp is None:
            relay_only = config.get("iceTransportPolicy") == "relay"
            unused = self.pc
            self._new_peer_connection(
                RTCConfiguration(
                    iceServers=[
                        RTCIceServer(s["urls"], s.get("username"), s.get("credential"))
                        for s in servers
                    ],
                    iceTransportPolicy=RTCIceTransportPolicy.RELAY
                    if relay_only
                    else RTCIceTransportPolicy.ALL,
                )
            )
            await unused.close()
        if self._offer_sdp is None:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            self._offer_sdp = self.pc.localDescription.sdp
        offer = {"sdp": self._offer_sdp, "type": "offer", "webrtc_id": self.webrtc_id}
        started = time.monotonic()
        status, answer = await self._server_fn("offer", offer)
        self.offer_seconds = time.monotonic() - started
        if status != 200 or not isinstance(answer, dict) or "sdp" not in answer:
            # fastrtc refuses with HTTP 200 and {"status": "failed", "meta": {...}}.
            refusal = answer if isinstance(answer, dict) else {"body": answer}
            raise OfferRefused({"http_status": status, **refusal}, self.offer_seconds)
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type=answer["type"])
        )
        self.codec = _audio_codec(answer["sdp"])
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                self._time_packets(transceiver.receiver)
        await self._until(self.connected, CONNECT_TIMEOUT, "connecting")

    async def _until(self, event: asyncio.Event, timeout: float, doing: str) -> None:
        """Wait for ``event``; TimeoutError after ``timeout``, ConnectionLost if the peer goes."""
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.gone.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if event.is_set():
            return
        if self.gone.is_set():
            raise ConnectionLost(f"{self.name}: {self.lost} while {doing}")
        raise TimeoutError(f"{self.name}: no {doing} within {timeout:.0f} s")

    async def _say(self, audio: np.ndarray) -> float:
        """Speak ``audio``; when its last frame left the microphone (bounded: SPEAK_SLACK_SECS)."""
        spoken = self.mic.say(audio)
        done = asyncio.Event()
        spoken.add_done_callback(lambda _: done.set())
        await self._until(done, len(audio) / SAMPLE_RATE + SPEAK_SLACK_SECS, "speaking")
        return spoken.result()

    def _time_packets(self, receiver) -> None:
        """Note when each RTP packet of the reply arrives, before aiortc's jitter buffer."""
        handle = receiver._handle_rtp_packet
        packets = self.heard.packets
        origin: list[int] = []

        async def timed(packet, arrival_time_ms: int) -> None:
            if not origin:
                origin.append(packet.timestamp)
            # As aiortc numbers the decoded frame (its TimestampMapper), wrap included.
            packets.setdefault((packet.timestamp - origin[0]) % 2**32, time.monotonic())
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = timed

    def _on_channel_message(self, raw: str) -> None:
        try:
            message = json.loads(raw)
        except (TypeError, ValueError):
            message = {"type": "raw", "data": raw}
        if not isinstance(message, dict):
            message = {"type": "raw", "data": message}
        message["t"] = time.monotonic()
        self.messages.append(message)
        kind = message.get("type")
        if kind == "send_input":
            # The page's tick event: the settings state goes to this session.
            self._spawn(self._send_settings(), "tick")
        elif kind == "fetch_output":
            self.outputs_seen.set()
            if not self._dashboard_started:
                self._dashboard_started = True
                self._spawn(self._join(self.api.state_change_fn, [self.value]), "outputs")
        elif kind == "end_stream":
            self.ended = str(message.get("data"))

    async def _send_settings(self) -> None:
        await self._join(self.api.tick_fn, [self.value, None])
        self.settings_sent.set()

    async def wait_until_live(self, timeout: float = CONNECT_TIMEOUT) -> float:
        """Until the session's pipeline runs (its first UI update); returns seconds waited."""
        started = time.monotonic()
        await self._until(self.outputs_seen, timeout, "session start (first UI update)")
        return time.monotonic() - started

    # -- audio ---------------------------------------------------------------

    async def _listen(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            samples = frame.to_ndarray().astype(np.float32)
            rms = float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0
            self.heard.frames.append((time.monotonic(), rms))
            self.heard.sent_at.append(
                None if frame.pts is None else self.heard.packets.get(frame.pts)
            )
            self.heard.arrived.set()

    async def turn(self, question: str, audio: np.ndarray, timeout: float = TURN_TIMEOUT) -> dict:
        """Speak ``audio``, wait for the reply to start and end; returns what was heard.

        ``voice_to_voice`` (None: no reply within ``timeout``) runs from the last
        frame of ``audio`` leaving the microphone; ``mouth_to_ear`` from the end
        of its voice (its last sample above ``VOICE_LEVEL``: Piper ends a clip
        with ~0.2 s of silence) to the first audible reply frame decoded. Also
        the reply's length, ``reply_arrivals`` (when each of its 20 ms frames
        arrived, time.monotonic()), and on the server's clock (``*_wall``,
        time.time()): the end of the voice, the reply's first packet, its first
        frame decoded and its first audible frame decoded.
        """
        start_index = len(self.heard.frames)
        spoken_until = await self._say(audio)
        speech_end = spoken_until - _trailing_silence_secs(audio)
        deadline = spoken_until + timeout
        first_index = await self._first_audible_reply(spoken_until, start_index, deadline)
        if first_index is None:
            return {"question": question, "voice_to_voice": None, "ended": self.ended}
        first = self.heard.frames[first_index][0]
        while time.monotonic() < deadline:
            last = self.heard.last_audible(first_index) or first
            if time.monotonic() - last >= REPLY_QUIET_SECS:
                break
            await asyncio.sleep(0.1)
        last = self.heard.last_audible(first_index) or first
        reply = [t for t, _ in self.heard.frames[first_index:] if t <= last]
        # The reply's first frame of any loudness (no audio is sent between replies).
        reply_start = next(
            i
            for i in range(start_index, first_index + 1)
            if (self.heard.sent_at[i] or self.heard.frames[i][0]) >= speech_end
        )
        return {
            "question": question,
            "voice_to_voice": first - spoken_until,
            "mouth_to_ear": first - speech_end,
            "speech_end_wall": self._wall(speech_end),
            "reply_first_packet_wall": self._wall(self.heard.sent_at[reply_start]),
            "reply_first_frame_wall": self._wall(self.heard.frames[reply_start][0]),
            "first_audible_wall": self._wall(first),
            "reply_frames": len(reply),
            "reply_seconds": len(reply) * FRAME_SECS,
            "reply_arrivals": reply,
        }

    async def barge_in(
        self,
        question: str,
        audio: np.ndarray,
        interruption: np.ndarray,
        after_secs: float = 1.0,
        timeout: float = TURN_TIMEOUT,
    ) -> dict:
        """Ask for a long answer, speak ``interruption`` over it ``after_secs`` in, time the stop.

        ``barge_in_stop`` runs from the interruption's voice onset leaving the
        microphone to the end of the last audible frame of the interrupted reply
        received (the first one followed by ``BARGE_IN_QUIET_SECS`` of quiet: the
        answer to the interruption comes later). None when the reply never came
        or ended before the interruption.
        """
        start_index = len(self.heard.frames)
        spoken_until = await self._say(audio)
        deadline = spoken_until + timeout
        first_index = await self._first_audible_reply(spoken_until, start_index, deadline)
        if first_index is None:
            return {"question": question, "barge_in_stop": None, "ended": self.ended}
        first = self.heard.frames[first_index][0]
        await asyncio.sleep(max(0.0, first + after_secs - time.monotonic()))
        if time.monotonic() - (self.heard.last_audible(first_index) or first) > BARGE_IN_QUIET_SECS:
            return {"question": question, "barge_in_stop": None, "error": "the reply had ended"}
        said_at = time.monotonic()
        onset = said_at + _voice_onset_secs(interruption)
        spoken = asyncio.ensure_future(self._say(interruption))
        stopped = None
        while time.monotonic() < deadline:
            stopped = self._reply_stop(onset - BARGE_IN_QUIET_SECS)
            if stopped is not None and time.monotonic() - stopped >= BARGE_IN_QUIET_SECS:
                break
            await self._wait_frames(0.1)
        await spoken
        return {
            "question": question,
            "voice_to_voice": first - spoken_until,
            "barge_in_stop": None if stopped is None else max(0.0, stopped - onset),
        }

    async def _first_audible_reply(
        self, spoken_until: float, start_index: int, deadline: float
    ) -> int | None:
        """Index of the reply's first audible frame (None: none by ``deadline``, or it ended)."""
        while True:
            found = self.heard.first_audible_sent_after(spoken_until, start_index)
            if found is not None:
                return found
            if self.gone.is_set():
                raise ConnectionLost(f"{self.name}: {self.lost} while waiting for a reply")
            if time.monotonic() > deadline or self.ended is not None:
                return None
            await self._wait_frames(0.1)

    def _reply_stop(self, since: float) -> float | None:
        """The end of the reply playing at ``since``: its last audible frame before a gap."""
        stopped = None
        for arrival, rms in self.heard.frames:
            if arrival < since or rms < AUDIBLE_RMS:
                continue
            if stopped is not None and arrival - stopped > BARGE_IN_QUIET_SECS:
                break
            stopped = arrival + FRAME_SECS
        return stopped

    def _wall(self, monotonic: float | None) -> float | None:
        return None if monotonic is None else monotonic + self.clock_offset

    async def _completed_output(self, event_id: str | None, timeout: float) -> dict:
        """The output of a queued event of this session's, once Gradio says it completed."""
        deadline = time.monotonic() + timeout
        while str(event_id) not in self._completed:
            if time.monotonic() > deadline:
                raise TimeoutError("the event never completed")
            self._completion.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._completion.wait(), 0.5)
        return self._completed.pop(str(event_id)).get("output") or {}

    async def pick_stt(self, provider: str, timeout: float = 20.0) -> None:
        """Pick a speech-to-text provider in the page's dropdown (before :meth:`connect`)."""
        if self.api.stt_provider_fn is None:
            raise LookupError("the page has no speech-to-text provider dropdown")
        event_id = await self._join(self.api.stt_provider_fn, [None, provider])
        await self._completed_output(event_id, timeout)

    async def export_events(self, timeout: float = 20.0) -> list[dict]:
        """The session's events as the page's "Export session" button gets them (its own only)."""
        if self.api.export_fn is None:
            return []
        exported = await self._download(self.api.export_fn, timeout)
        return [] if exported is None else exported.get("events", [])

    async def download_trace(self, timeout: float = 20.0) -> dict | None:
        """The session's spans (OTLP/JSON) as the page's "Download trace" button gets them.

        None when the page refused (its error says why) or has no such button.
        """
        if self.api.trace_fn is None:
            return None
        return await self._download(self.api.trace_fn, timeout)

    async def _download(self, fn_index: int, timeout: float) -> dict | None:
        """Click a button whose output is a file, and read the file the page would offer."""
        event_id = await self._join(fn_index, [self.value])
        output = await self._completed_output(event_id, timeout)
        data = (output.get("data") or [None])[0]
        value = data.get("value") if isinstance(data, dict) else None
        if not isinstance(value, dict) or not value.get("url"):
            return None
        async with self.http.get(value["url"]) as r:
            r.raise_for_status()
            return json.loads(await r.read())

    async def _wait_frames(self, timeout: float) -> None:
        self.heard.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.heard.arrived.wait(), timeout)

    async def pause(self, seconds: float) -> None:
        """Keep the microphone open (silence) for ``seconds``."""
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server_fn("quit_output_stream", self.value), CLOSE_TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def visitor_address(index: int) -> str:
    """A loopback address of its own for visitor ``index`` (0, 1, ...): 127.0.0.2 upwards."""
    if not 0 <= index < 250:
        raise ValueError("visitor addresses run from 127.0.0.2 to 127.0.0.251")
    return f"127.0.0.{index + 2}"


def http_session(address: str | None = None, headers: dict[str, str] | None = None):
    """An aiohttp session for the clients: never through a proxy (trust_env stays False).

    ``address``: connect from this local address (any of 127.0.0.0/8 on Linux),
    so the app counts its requests as another client's. Its cookie jar is a
    browser's: behind ``python -m deploy`` a visitor is pinned to a worker by
    HAProxy's cookie, so each visitor needs a session of its own (aiohttp's
    default jar refuses cookies from a bare IP address such as 127.0.0.1).
    """
    import aiohttp

    connector = aiohttp.TCPConnector(local_addr=(address, 0)) if address else None
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30),
        connector=connector,
        headers=headers,
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    )
