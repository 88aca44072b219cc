"""Voice-to-voice as a WebRTC client hears it: ``python app.py`` driven by aiortc clients.

Each client talks to the app exactly as the page's fastrtc component does:

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

Measured per turn: from the moment the last frame of the Piper-spoken question
leaves the client's microphone track (handed to the Opus encoder) to the first
*audible* (RMS >= ``AUDIBLE_RMS``) 20 ms frame of the reply decoded on the
client: voice-to-voice as the listener hears it, including RTP/Opus both ways,
fastrtc's queues and pacing, and aiortc's receive jitter buffer (it releases an
audio frame once 4 later ones have arrived: ~80 ms, in the range of a
browser's NetEq, which adapts).

Comparison with the headless benchmark (``python -m bench``, which drives
``VoiceSession`` directly through ``bench.driver.SessionDriver``): its
``first_audio`` is the same measurement (last speech frame in -> first audible
reply chunk out) taken at ``VoiceSession.receive``/``emit`` without any
transport, so **transport cost ~ median(voice_to_voice_client) - median(first_audio)**
for the same profile and machine load. Its ``voice_to_voice`` (pipecat's
observer) starts later, when VAD decides the user stopped, so do not subtract
that one.

A session counts as live at its first ``fetch_output`` (the pipeline reports
"session started" once it runs); the first question follows 0.5 s later, and
concurrent sessions are staggered by ``STAGGER_SECS`` so visitors do not all
speak in lockstep. A reply is over after ``REPLY_QUIET_SECS`` with nothing
audible; the next question follows ``PAUSE_BETWEEN_TURNS_SECS`` later. The
microphone sends silence throughout (a silent microphone still sends frames,
and the app closes a session whose audio stops).

``underruns`` models a listener's playout: a reply starts playing
``PLAYOUT_BUFFER_SECS`` after its first audible frame arrives, each frame then
plays for 20 ms, and a frame arriving after its slot is an underrun (playback
stalls by the lateness). A pause the server itself leaves inside a reply
(nothing queued, so fastrtc sends nothing) counts too: the listener hears a
hole either way.

Timing figures on a shared 2-core machine are indicative: the app, the clients
(aiortc's per-packet RTP/SRTP work and Opus encode and decode for every
session, which a real visitor's browser does on another machine) and the
provider fakes compete for the same CPUs; ``cpu`` says how much each side used
while talking and ``machine.loadavg_*`` how busy the machine was.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import json
import os
import random
import resource
import signal
import socket
import string
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.figures import summarize
from bench.scenarios import QUESTIONS

ROOT = Path(__file__).resolve().parent.parent

SAMPLE_RATE = 48000
FRAME_SECS = 0.02
FRAME_SAMPLES = int(SAMPLE_RATE * FRAME_SECS)
# A decoded 20 ms frame at or above this RMS (int16 scale, ~ -50 dBFS) is "audible".
AUDIBLE_RMS = 100.0
# A reply is over once nothing audible arrived for this long.
REPLY_QUIET_SECS = 1.5
# Silence the client keeps sending between a reply's end and the next question.
PAUSE_BETWEEN_TURNS_SECS = 0.8
# Listener playout model for ``underruns``.
PLAYOUT_BUFFER_SECS = 0.06
# Sessions start talking this far apart (visitors do not arrive in lockstep).
STAGGER_SECS = 0.7
APP_START_TIMEOUT = 240.0
TURN_TIMEOUT = 40.0
CONNECT_TIMEOUT = 30.0
READY_LOG_LINE = "Voice Lab ready in"

PROFILES = ("local", "cloud-sim")


def _loopback_only() -> None:
    """The app's own aioice patch: offer and accept nothing but 127.0.0.1."""
    from pipeline.runtime import restrict_ice_to_loopback

    restrict_ice_to_loopback()


def _cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of this process, or of ``pid`` (from /proc; None if gone)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the app


@dataclass
class AppProcess:
    """``python app.py`` in its own process group, its output timestamped line by line."""

    url: str
    process: asyncio.subprocess.Process
    started_at: float
    log_path: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    http_ready_at: float | None = None
    _reader: asyncio.Task | None = None

    def seconds_to_line(self, needle: str) -> float | None:
        for t, line in self.lines:
            if needle in line:
                return t - self.started_at
        return None

    def log_tail(self, chars: int = 4000) -> str:
        return "".join(line for _, line in self.lines)[-chars:]

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


def app_environment(port: int, max_sessions: int, extra: dict[str, str] | None = None) -> dict:
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "ORT_DISABLE_TELEMETRY": "1",
        "VOICE_LAB_LOOPBACK_ICE": "1",
        "VOICE_LAB_MAX_SESSIONS": str(max_sessions),
        # Every simulated visitor comes from 127.0.0.1: one client, as the app counts.
        "VOICE_LAB_MAX_SESSIONS_PER_CLIENT": str(max_sessions),
        "VOICE_LAB_LOG_LEVEL": "INFO",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    # Server keys would move every stage's default away from local.
    for name in ("GROQ_API_KEY", "ELEVENLABS_API_KEY", "GROQ_BASE_URL", "ELEVENLABS_BASE_URL"):
        env.pop(name, None)
    env.update(extra or {})
    return env


async def start_app(
    max_sessions: int, extra_env: dict[str, str] | None = None, log_path: Path | None = None
) -> AppProcess:
    """Start ``python app.py`` and return once it answers HTTP 200 on ``/``."""
    port = _free_port()
    log_path = log_path or Path(tempfile.gettempdir()) / f"voice-lab-webrtc-{port}.log"
    started_at = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "app.py",
        cwd=ROOT,
        env=app_environment(port, max_sessions, extra_env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    app = AppProcess(f"http://127.0.0.1:{port}", process, started_at, log_path)

    async def read_output() -> None:
        assert process.stdout is not None
        with log_path.open("w") as log:
            async for raw in process.stdout:
                line = raw.decode(errors="replace")
                app.lines.append((time.monotonic(), line))
                log.write(line)
                log.flush()

    app._reader = asyncio.create_task(read_output(), name="app-output")
    try:
        app.http_ready_at = await _wait_http_ready(app)
    except BaseException:
        await app.stop()
        raise
    return app


async def _wait_http_ready(app: AppProcess) -> float:
    import aiohttp

    deadline = time.monotonic() + APP_START_TIMEOUT
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if app.process.returncode is not None:
                raise RuntimeError(
                    f"app.py exited with {app.process.returncode}:\n{app.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with http.get(app.url + "/", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return time.monotonic()
            await asyncio.sleep(0.1)  # polling interval, not synchronisation
    raise TimeoutError(f"app.py did not serve within {APP_START_TIMEOUT:.0f}s:\n{app.log_tail()}")


@dataclass(frozen=True)
class PageApi:
    """What the page's JavaScript knows from ``/config``: component and event ids."""

    webrtc_id: int
    tick_fn: int
    state_change_fn: int


async def page_api(http, base_url: str) -> PageApi:
    async with http.get(f"{base_url}/config") as r:
        config = await r.json()
    webrtc = next(c["id"] for c in config["components"] if c.get("type") == "webrtc")

    def dependency(event: str) -> int:
        for dep in config["dependencies"]:
            if [webrtc, event] in [list(t) for t in dep["targets"]]:
                return dep["id"]
        raise LookupError(f"no {event} event on the WebRTC component")

    return PageApi(webrtc, dependency("tick"), dependency("state_change"))


# --------------------------------------------------------------------------- audio


def _to_48k(pcm16k: np.ndarray, rate: int = 16000) -> np.ndarray:
    import soxr

    audio = soxr.resample(pcm16k.astype(np.float32) / 32768, rate, SAMPLE_RATE)
    return (np.clip(audio, -1, 1) * 32767).astype(np.int16)


def question_audio(text: str) -> np.ndarray:
    """``text`` spoken by Piper (``bench.speech``, 16 kHz) resampled to 48 kHz for Opus."""
    from bench.speech import speech_pcm

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
    """Arrival time and RMS of every decoded 20 ms frame of the remote track."""

    frames: list[tuple[float, float]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def first_audible_after(self, t: float, start: int = 0) -> int | None:
        """Index of the first audible frame arriving at or after ``t``."""
        for index in range(start, len(self.frames)):
            arrival, rms = self.frames[index]
            if arrival >= t and rms >= AUDIBLE_RMS:
                return index
        return None

    def last_audible(self, start: int = 0) -> float | None:
        for arrival, rms in reversed(self.frames[start:]):
            if rms >= AUDIBLE_RMS:
                return arrival
        return None


def playout_underruns(arrivals: list[float], buffer_secs: float = PLAYOUT_BUFFER_SECS):
    """(count, stalled seconds) for a listener playing ``arrivals`` (20 ms frames) in order."""
    if not arrivals:
        return 0, 0.0
    play_at = arrivals[0] + buffer_secs
    count, stalled = 0, 0.0
    for arrival in arrivals:
        if arrival > play_at:
            count += 1
            stalled += arrival - play_at
            play_at = arrival
        play_at += FRAME_SECS
    return count, stalled


# --------------------------------------------------------------------------- one client


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
        from aiortc import RTCConfiguration, RTCPeerConnection

        _loopback_only()
        self.http = http
        self.base_url = base_url
        self.api = api
        self.name = name
        alphabet = string.ascii_lowercase + string.digits
        self.session_hash = "".join(random.choices(alphabet, k=11))
        self.webrtc_id = "".join(random.choices(alphabet, k=11))
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = _microphone_track_class()()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("text")
        self.heard = Heard()
        self.messages: list[dict] = []
        self.connected = asyncio.Event()
        self.settings_sent = asyncio.Event()
        self.outputs_seen = asyncio.Event()
        self.ended: str | None = None
        self.offer_seconds: float | None = None
        self._tasks: list[asyncio.Task] = []
        # False: never start the page's dashboard stream (what the UI rendering costs).
        self._dashboard_started = not dashboard
        self._offer_sdp: str | None = None
        self._stream: asyncio.Task | None = None
        self.codec: str | None = None
        self.queue_messages: dict[str, int] = {}

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

        @self.pc.on("connectionstatechange")
        def _on_state():
            if self.pc.connectionState == "connected":
                self.connected.set()

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

    async def _join(self, fn_index: int, data: list) -> None:
        body = {
            "data": data,
            "event_data": None,
            "fn_index": fn_index,
            "trigger_id": self.api.webrtc_id,
            "session_hash": self.session_hash,
        }
        async with self.http.post(f"{self.base_url}/gradio_api/queue/join", json=body) as r:
            r.raise_for_status()
        # As Gradio's JS client: an SSE stream per session while it has events
        # pending (it closes itself once they have all completed).
        if self._stream is None or self._stream.done():
            self._stream = asyncio.create_task(self._queue_stream(), name=f"{self.name}-sse")
            self._tasks.append(self._stream)

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
                        msg = str(json.loads(line[5:]).get("msg"))
                        self.queue_messages[msg] = self.queue_messages.get(msg, 0) + 1
                        if msg == "close_stream":
                            return

    async def connect(self) -> None:
        """The page's Record button: ICE config, offer, answer; raises OfferRefused."""
        from aiortc import RTCSessionDescription

        status, _config = await self._server_fn("turn", {})
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
        await asyncio.wait_for(self.connected.wait(), CONNECT_TIMEOUT)

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
        await asyncio.wait_for(self.outputs_seen.wait(), timeout)
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
            self.heard.arrived.set()

    async def turn(self, question: str, audio: np.ndarray, timeout: float = TURN_TIMEOUT) -> dict:
        """Speak ``audio``, wait for the reply to start and end; returns the turn's figures."""
        start_index = len(self.heard.frames)
        spoken_until = await self.mic.say(audio)
        deadline = spoken_until + timeout
        first_index = None
        while first_index is None:
            first_index = self.heard.first_audible_after(spoken_until, start_index)
            if first_index is None:
                if time.monotonic() > deadline or self.ended is not None:
                    return {"question": question, "voice_to_voice": None, "ended": self.ended}
                await self._wait_frames(0.1)
        first = self.heard.frames[first_index][0]
        while time.monotonic() < deadline:
            last = self.heard.last_audible(first_index) or first
            if time.monotonic() - last >= REPLY_QUIET_SECS:
                break
            await asyncio.sleep(0.1)
        last = self.heard.last_audible(first_index) or first
        reply = [t for t, _ in self.heard.frames[first_index:] if t <= last]
        gaps = [b - a for a, b in itertools.pairwise(reply) if b - a > 0.1]
        underruns, stalled = playout_underruns(reply)
        return {
            "question": question,
            "voice_to_voice": first - spoken_until,
            "reply_frames": len(reply),
            "reply_seconds": len(reply) * FRAME_SECS,
            "arrival_gaps_over_100ms": len(gaps),
            "longest_gap": max(gaps, default=0.0),
            "underruns": underruns,
            "stalled_seconds": stalled,
        }

    async def _wait_frames(self, timeout: float) -> None:
        self.heard.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.heard.arrived.wait(), timeout)

    async def pause(self, seconds: float) -> None:
        """Keep the microphone open (silence) for ``seconds``."""
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server_fn("quit_output_stream", self.value), 5)
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --------------------------------------------------------------------------- scenarios


class _ThreadLoop:
    """An event loop in a thread of its own for the provider fakes.

    Their work (JSON, base64, TLS, latency timers) must not queue on the loop
    that paces the clients' microphones and timestamps what they hear.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fakes", daemon=True)
        self._thread.start()

    async def run(self, coro):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@contextlib.asynccontextmanager
async def _profile_env(profile: str):
    """The app's extra environment for ``profile`` (cloud-sim: fakes on 127.0.0.1 in this process).

    With the fakes' keys in its environment the app's defaults pick Groq for
    STT and LLM and ElevenLabs for TTS, as a visitor with no keys of their own gets.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: one of {PROFILES}")
    if profile == "local":
        yield {}, {}
        return
    from bench.cloudsim import LLM_TOKEN_INTERVAL, LLM_TTFT, STT_LATENCY, TTS_FIRST_AUDIO
    from tests.fakes.elevenlabs import FakeElevenLabs
    from tests.fakes.groq import FakeGroq

    groq = FakeGroq(
        stt_latency=STT_LATENCY, llm_ttft=LLM_TTFT, llm_token_interval=LLM_TOKEN_INTERVAL
    )
    eleven = FakeElevenLabs(tts_first_audio=TTS_FIRST_AUDIO)
    fakes = _ThreadLoop()
    try:
        await fakes.run(groq.start())
        try:
            await fakes.run(eleven.start())
            try:
                env = {
                    "GROQ_API_KEY": groq.api_key,
                    "ELEVENLABS_API_KEY": eleven.api_key,
                    "GROQ_BASE_URL": groq.base_url,
                    "ELEVENLABS_BASE_URL": eleven.base_url,
                    "SSL_CERT_FILE": eleven.cert_path,
                }
                yield env, {"groq": groq, "elevenlabs": eleven}
            finally:
                await fakes.run(eleven.stop())
        finally:
            await fakes.run(groq.stop())
    finally:
        fakes.close()


def _http_session():
    import aiohttp

    # trust_env stays False: never through a proxy, 127.0.0.1 only.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))


async def _run_client(
    client: WebRTCClient, questions: list[tuple[str, np.ndarray]], stagger: float = 0.0
) -> dict:
    result: dict[str, Any] = {"name": client.name, "webrtc_id": client.webrtc_id}
    started = time.monotonic()
    await client.connect()
    result["connect_seconds"] = time.monotonic() - started
    result["offer_seconds"] = client.offer_seconds
    result["codec"] = client.codec
    await client.wait_until_live()
    result["live_seconds"] = time.monotonic() - started
    result["settings_sent"] = client.settings_sent.is_set()
    await client.pause(0.5 + stagger)
    turns = []
    for text, audio in questions:
        turns.append(await client.turn(text, audio))
        await client.pause(PAUSE_BETWEEN_TURNS_SECS)
    result["turns"] = turns
    result["late_mic_frames"] = client.mic.late_frames
    result["queue_messages"] = dict(client.queue_messages)
    result["ended"] = client.ended
    return result


async def run_webrtc_scenario(
    profile: str, sessions: int, turns: int, *, dashboard: bool = True
) -> dict:
    """``sessions`` aiortc clients talk ``turns`` turns each to ``python app.py``.

    Returns ``{"profile", "sessions", "turns", "voice_to_voice_client": {median,
    p95, max, n}, "per_session": [...], "underruns": {...}, "machine": {...}}``.
    ``voice_to_voice_client`` is last speech frame sent -> first audible reply
    frame decoded, as the client hears it. The headless benchmark's
    ``first_audio`` (``python -m bench``) is the same measurement without the
    transport, so the transport's cost is about the difference of the two
    medians (same profile, similar load). See the module docstring.

    ``dashboard=False`` never starts the page's dashboard stream, so the app
    renders no HTML or charts: the difference to the default run is what
    rendering the live dashboard costs the voice loop (the headless benchmark
    folds events into state but renders nothing either).
    """
    load_before = os.getloadavg()
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(turns)]
    # Synthesised up front: a microphone does not pause between turns.
    audio = {q: question_audio(q) for q in questions}
    providers: dict[str, Any] = {}
    async with _profile_env(profile) as (extra_env, fakes):
        app = await start_app(max(sessions, 4), extra_env)
        try:
            async with _http_session() as http:
                api = await page_api(http, app.url)
                clients = [
                    WebRTCClient(http, app.url, api, name=f"session-{i + 1}", dashboard=dashboard)
                    for i in range(sessions)
                ]
                cpu_before = (_cpu_seconds(), _cpu_seconds(app.process.pid))
                talk_started = time.monotonic()
                try:
                    # Different questions per session, so replies do not line up by accident.
                    outcomes = await asyncio.gather(
                        *(
                            _run_client(
                                c,
                                [(q, audio[q]) for q in _rotate(questions, i)],
                                stagger=i * STAGGER_SECS,
                            )
                            for i, c in enumerate(clients)
                        ),
                        return_exceptions=True,
                    )
                finally:
                    cpu = _cpu_usage(cpu_before, app, talk_started)
                    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        finally:
            await app.stop()
        if fakes:  # proof the app ran on the (fake) cloud providers, not locally
            providers = {
                "groq_requests": {k: v["ok"] for k, v in fakes["groq"].stats.items()},
                "elevenlabs_tts_messages": len(fakes["elevenlabs"].messages),
            }
    per_session = []
    for client, outcome in zip(clients, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            per_session.append({"name": client.name, "error": repr(outcome)})
        else:
            per_session.append(outcome)
    all_turns = [t for s in per_session for t in s.get("turns", [])]
    v2v = [t["voice_to_voice"] for t in all_turns if t.get("voice_to_voice") is not None]
    for s in per_session:
        figures = [t["voice_to_voice"] for t in s.get("turns", []) if t.get("voice_to_voice")]
        s["voice_to_voice_client"] = summarize(figures)
    return {
        "profile": profile,
        "sessions": sessions,
        "turns": turns,
        "dashboard": dashboard,
        "voice_to_voice_client": summarize(v2v),
        "unanswered_turns": sum(1 for t in all_turns if t.get("voice_to_voice") is None),
        "per_session": per_session,
        "underruns": {
            "count": sum(t.get("underruns", 0) for t in all_turns),
            "stalled_seconds": sum(t.get("stalled_seconds", 0.0) for t in all_turns),
            "arrival_gaps_over_100ms": sum(t.get("arrival_gaps_over_100ms", 0) for t in all_turns),
            "reply_seconds": sum(t.get("reply_seconds", 0.0) for t in all_turns),
            "playout_buffer_secs": PLAYOUT_BUFFER_SECS,
        },
        "providers": providers,
        "cpu": cpu,
        "audible_rms_threshold": AUDIBLE_RMS,
        "app_log": str(app.log_path),
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
        },
    }


def _cpu_usage(before: tuple, app: AppProcess, since: float) -> dict:
    """CPU seconds the clients (this process, fakes included) and the app used while talking."""
    client, server = _cpu_seconds(), _cpu_seconds(app.process.pid)
    return {
        "wall_seconds": time.monotonic() - since,
        "client_seconds": client - before[0],
        "app_seconds": None if server is None or before[1] is None else server - before[1],
    }


def _rotate(items: list, by: int) -> list:
    by %= max(len(items), 1)
    return items[by:] + items[:by]


async def measure_app_startup() -> dict:
    """Seconds from ``python app.py`` starting to its models being warm and to HTTP 200 on ``/``.

    ``models_ready_seconds`` is when the app logs "Voice Lab ready in" (end of
    ``prepare_runtime``: offline guards, loopback ICE, all three local models
    loaded and warmed); the app only builds the page and starts serving after
    that, so a visitor can start a session as soon as ``/`` answers:
    ``http_ready_seconds`` is the figure that matters to a visitor.
    ``models_ready_seconds`` includes importing gradio, fastrtc and pipecat.
    """
    load_before = os.getloadavg()
    app = await start_app(4)
    try:
        http_ready = app.http_ready_at - app.started_at
        models_ready = app.seconds_to_line(READY_LOG_LINE)
        warm = None
        for _, line in app.lines:
            if READY_LOG_LINE in line:
                with contextlib.suppress(ValueError, IndexError):
                    warm = float(line.split(READY_LOG_LINE)[1].strip().rstrip("s"))
    finally:
        await app.stop()
    return {
        "http_ready_seconds": http_ready,
        "models_ready_seconds": models_ready,
        "prepare_runtime_seconds": warm,
        "loadavg": {"before": load_before, "after": os.getloadavg()},
    }


async def check_refusal(limit: int) -> dict:
    """With ``VOICE_LAB_MAX_SESSIONS=limit``, ``limit + 1`` visitors arrive.

    The first ``limit`` connect and stay; the extra one's offer is answered
    (fastrtc's concurrency limit) and its answer and latency reported; then
    every admitted session takes a turn, to show it was unaffected. Finally one
    admitted visitor leaves and the extra one retries until it is let in.
    """
    load_before = os.getloadavg()
    question = QUESTIONS[0]
    audio = question_audio(question)
    app = await start_app(limit)
    result: dict[str, Any] = {"limit": limit}
    try:
        async with _http_session() as http:
            api = await page_api(http, app.url)
            admitted = [
                WebRTCClient(http, app.url, api, name=f"visitor-{i + 1}") for i in range(limit)
            ]
            extra = WebRTCClient(http, app.url, api, name=f"visitor-{limit + 1}")
            try:
                for client in admitted:
                    await client.connect()
                await asyncio.gather(*(c.wait_until_live() for c in admitted))
                refusal: dict[str, Any] = {"refused": False}
                started = time.monotonic()
                try:
                    await asyncio.wait_for(extra.connect(), CONNECT_TIMEOUT)
                except OfferRefused as e:
                    error = (e.answer.get("meta") or {}).get("error")
                    refusal = {
                        "refused": True,
                        "seconds": e.seconds,
                        "answer": e.answer,
                        "page_message": PAGE_MESSAGES.get(error, "Unexpected server error"),
                    }
                except TimeoutError:
                    refusal = {"refused": False, "hung": True}
                refusal.setdefault("wall_seconds", time.monotonic() - started)
                result["extra_visitor"] = refusal
                await admitted[0].pause(0.5)
                turns = await asyncio.gather(*(c.turn(question, audio) for c in admitted))
                result["admitted"] = [
                    {"name": c.name, "connect_offer_seconds": c.offer_seconds, **t}
                    for c, t in zip(admitted, turns, strict=True)
                ]
                if refusal.get("refused"):
                    result["after_release"] = await _retry_after_release(admitted[0], extra)
            finally:
                await asyncio.gather(
                    *(c.close() for c in [*admitted, extra]), return_exceptions=True
                )
    finally:
        await app.stop()
    result["app_log"] = str(app.log_path)
    result["machine"] = {"loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    return result


async def _retry_after_release(leaving: WebRTCClient, waiting: WebRTCClient) -> dict:
    """One visitor leaves; the refused one retries every 0.5 s (as a user pressing Record)."""
    await leaving.close()
    left = time.monotonic()
    attempts = 0
    while time.monotonic() - left < 15:
        attempts += 1
        try:
            await waiting.connect()
        except OfferRefused:
            await asyncio.sleep(0.5)
            continue
        return {"admitted": True, "seconds": time.monotonic() - left, "attempts": attempts}
    return {"admitted": False, "attempts": attempts}


def format_scenario(result: dict) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    v2v = result["voice_to_voice_client"]
    under = result["underruns"]
    load = result["machine"]
    return "\n".join(
        [
            f"webrtc {result['profile']}: {result['sessions']} session(s) x {result['turns']} "
            f"turn(s), answered {v2v['n']}, unanswered {result['unanswered_turns']}",
            f"voice-to-voice (client) median {ms(v2v['median'])}  p95 {ms(v2v['p95'])}  "
            f"max {ms(v2v['max'])}",
            f"underruns {under['count']} ({under['stalled_seconds']:.2f} s stalled over "
            f"{under['reply_seconds']:.1f} s of replies), arrival gaps >100 ms "
            f"{under['arrival_gaps_over_100ms']}",
            f"load avg before {load['loadavg_before'][0]:.2f} after {load['loadavg_after'][0]:.2f}",
        ]
    )


async def _main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.webrtc")
    parser.add_argument("what", choices=["scenario", "startup", "refusal"])
    parser.add_argument("--profile", choices=PROFILES, default="local")
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--no-dashboard", action="store_true", help="never render the page")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.what == "scenario":
        result = await run_webrtc_scenario(
            args.profile, args.sessions, args.turns, dashboard=not args.no_dashboard
        )
        print(format_scenario(result))
    elif args.what == "startup":
        result = await measure_app_startup()
        print(json.dumps(result, indent=2))
    else:
        result = await check_refusal(args.limit)
        print(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    for _name, _value in {
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "ORT_DISABLE_TELEMETRY": "1",
        "VOICE_LAB_LOG_LEVEL": "WARNING",
    }.items():
        os.environ.setdefault(_name, _value)
    sys.exit(asyncio.run(_main(sys.argv[1:])))
