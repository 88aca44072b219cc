"""Voice-to-voice as a WebRTC visitor hears it: ``python app.py`` and aiortc clients.

The clients (:class:`testkit.webrtc_client.WebRTCClient`) talk to the app as
the page's fastrtc component does; this module runs the scenarios and works
out the figures: ``python -m bench webrtc|startup|refusal``.

Measured per turn: from the moment the last frame of the Piper-spoken question
leaves the client's microphone track to the first audible 20 ms frame of the
reply decoded on the client (see :mod:`testkit.webrtc_client`).

Comparison with the headless benchmark (``python -m bench``, which drives
``VoiceSession`` directly through ``testkit.driver.SessionDriver``): its
``first_audio`` is the same measurement (last speech frame in -> first audible
reply chunk out) taken at ``VoiceSession.receive``/``emit`` without any
transport, so **transport cost ~ median(voice_to_voice_client) - median(first_audio)**
for the same profile and machine load. Its ``voice_to_voice`` (pipecat's
observer) starts later, when VAD decides the user stopped, so do not subtract
that one.

**Mouth-to-ear** per turn runs from the end of the question's voice (its last
sample above the voice level, not the end of Piper's trailing silence) to the
first audible reply frame decoded, and is reported beside the server's own
V2V for the same turn (pipecat's, read from the session's export: the page's
"Export session" button) with the difference split where it goes
(:data:`bench.figures.EAR_PARTS`): the uplink and voice detection (before the
server's clock starts), fastrtc's queue and the network to the reply's first
packet, the client's jitter buffer (aiortc's 4 frames; a browser's NetEq
differs) and the reply's quiet start. ``cloud-sim-streaming`` picks Scribe
realtime in the page's speech-to-text dropdown before connecting.

A session counts as live at its first ``fetch_output`` (the pipeline reports
"session started" once it runs); the first question follows 0.5 s later, and
concurrent sessions are staggered by ``STAGGER_SECS`` so visitors do not all
speak in lockstep. A reply is over after ``REPLY_QUIET_SECS`` with nothing
audible; the next question follows ``PAUSE_BETWEEN_TURNS_SECS`` later. The
microphone sends silence throughout (a silent microphone still sends frames,
and the app closes a session whose audio stops).

``underruns`` models a listener's playout
(:func:`bench.figures.playout_underruns`): a reply starts playing
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
import itertools
import os
import time
from typing import Any

import aiohttp
import numpy as np

from bench.cloudsim import STREAMING_STT, CloudFakes
from bench.figures import (
    EAR_PARTS,
    PLAYOUT_BUFFER_SECS,
    cpu_seconds,
    mouth_to_ear_parts,
    playout_underruns,
    server_replies,
    summarize,
)
from bench.scenarios import QUESTIONS
from testkit.app import AppProcess
from testkit.webrtc_client import (
    AUDIBLE_RMS,
    CONNECT_TIMEOUT,
    PAGE_MESSAGES,
    OfferRefused,
    WebRTCClient,
    http_session,
    page_api,
    question_audio,
    visitor_address,
)

# Silence the client keeps sending between a reply's end and the next question.
PAUSE_BETWEEN_TURNS_SECS = 0.8
# Sessions start talking this far apart (visitors do not arrive in lockstep).
STAGGER_SECS = 0.7
READY_LOG_LINE = "Voice Lab ready in"


@contextlib.asynccontextmanager
async def _profile_env(profile: str):
    """The app's extra environment for ``profile``, and the fakes (cloud-sim: in this process).

    With the fakes' keys in its environment the app's defaults pick Groq for
    STT and LLM and ElevenLabs for TTS, as a visitor with no keys of their own gets.
    """
    if profile == "local":
        yield {}, None
        return
    if profile not in ("cloud-sim", "cloud-sim-streaming"):
        raise ValueError(f"unknown profile {profile!r}: local, cloud-sim or cloud-sim-streaming")
    # No watermarked utterances: Opus does not carry them, so the fakes hear their default question.
    async with CloudFakes() as fakes:
        yield fakes.app_environment(), fakes


def heard_figures(turn: dict) -> dict:
    """A client's turn with its reply's arrival times turned into figures for a listener."""
    arrivals = turn.pop("reply_arrivals", None)
    if arrivals is None:
        return turn
    gaps = [b - a for a, b in itertools.pairwise(arrivals) if b - a > 0.1]
    underruns = playout_underruns(arrivals)
    return {
        **turn,
        "arrival_gaps_over_100ms": len(gaps),
        "longest_gap": max(gaps, default=0.0),
        "underruns": underruns.count,
        "stalled_seconds": underruns.gap_seconds,
    }


async def _run_client(
    client: WebRTCClient,
    questions: list[tuple[str, np.ndarray]],
    stagger: float = 0.0,
    stt: str | None = None,
) -> dict:
    result: dict[str, Any] = {"name": client.name, "webrtc_id": client.webrtc_id}
    if stt is not None:  # as a visitor picks it in the page before pressing Record
        await client.pick_stt(stt)
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
        turns.append(heard_figures(await client.turn(text, audio)))
        await client.pause(PAUSE_BETWEEN_TURNS_SECS)
    result["turns"] = await _with_server_figures(client, turns)
    result["late_mic_frames"] = client.mic.late_frames
    result["queue_messages"] = dict(client.queue_messages)
    result["ended"] = client.ended
    return result


async def _with_server_figures(client: WebRTCClient, turns: list[dict]) -> list[dict]:
    """Each turn with the server's V2V for it and the parts of the wait beyond it.

    The server's figures come from the session's own export (the page's
    "Export session" button): every event with its time on the server's clock.
    """
    try:
        replies = server_replies(await client.export_events())
    except (TimeoutError, aiohttp.ClientError) as e:
        return [{**t, "server_figures_error": repr(e)} for t in turns]
    return [{**t, **(mouth_to_ear_parts(t, replies) or {})} for t in turns]


def mouth_to_ear_figures(turns: list[dict]) -> dict:
    """Pooled: mouth-to-ear, the server's V2V for the same turns, the difference and its parts."""
    matched = [t for t in turns if t.get("server_v2v") is not None]
    return {
        "mouth_to_ear": summarize([t.get("mouth_to_ear") for t in turns]),
        "server_v2v": summarize([t["server_v2v"] for t in matched]),
        "heard_minus_server": summarize([t["heard_minus_server"] for t in matched]),
        "heard_parts": {
            part: summarize([t["parts"][part] for t in matched if part in t["parts"]])
            for part in EAR_PARTS
        },
        "turns_with_server_figures": len(matched),
    }


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
        async with (
            # One slot more than the visitors: they all come from 127.0.0.1, and one
            # client may hold one connection fewer than there are slots.
            AppProcess(max_sessions=max(sessions + 1, 4), extra_env=extra_env) as app,
            http_session() as http,
        ):
            api = await page_api(http, app.url)
            clients = [
                WebRTCClient(http, app.url, api, name=f"session-{i + 1}", dashboard=dashboard)
                for i in range(sessions)
            ]
            cpu_before = (cpu_seconds(), cpu_seconds(app.process.pid))
            talk_started = time.monotonic()
            try:
                # Different questions per session, so replies do not line up by accident.
                outcomes = await asyncio.gather(
                    *(
                        _run_client(
                            c,
                            [(q, audio[q]) for q in _rotate(questions, i)],
                            stagger=i * STAGGER_SECS,
                            stt=STREAMING_STT[0] if profile == "cloud-sim-streaming" else None,
                        )
                        for i, c in enumerate(clients)
                    ),
                    return_exceptions=True,
                )
            finally:
                cpu = _cpu_usage(cpu_before, app, talk_started)
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        if fakes:  # proof the app ran on the (fake) cloud providers, not locally
            providers = {
                "groq_requests": {k: v["ok"] for k, v in fakes.groq.stats.items()},
                "elevenlabs_tts_messages": len(fakes.elevenlabs.messages),
                "elevenlabs_stt_commits": len(fakes.elevenlabs.stt_commits),
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
        **mouth_to_ear_figures(all_turns),
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
    client, server = cpu_seconds(), cpu_seconds(app.process.pid)
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
    async with AppProcess(max_sessions=4) as app:
        http_ready = app.http_ready_at - app.started_at
        models_ready = app.seconds_to_line(READY_LOG_LINE)
        warm = None
        for _, line in app.lines:
            if READY_LOG_LINE in line:
                with contextlib.suppress(ValueError, IndexError):
                    warm = float(line.split(READY_LOG_LINE)[1].strip().rstrip("s"))
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
    result: dict[str, Any] = {"limit": limit}
    async with contextlib.AsyncExitStack() as stack:
        app = await stack.enter_async_context(AppProcess(max_sessions=limit))
        # Each visitor from an address of its own (one client holds fewer than all the slots).
        https = [
            await stack.enter_async_context(http_session(visitor_address(i)))
            for i in range(limit + 1)
        ]
        api = await page_api(https[0], app.url)
        admitted = [
            WebRTCClient(https[i], app.url, api, name=f"visitor-{i + 1}") for i in range(limit)
        ]
        extra = WebRTCClient(https[limit], app.url, api, name=f"visitor-{limit + 1}")
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
                {"name": c.name, "connect_offer_seconds": c.offer_seconds, **heard_figures(t)}
                for c, t in zip(admitted, turns, strict=True)
            ]
            if refusal.get("refused"):
                result["after_release"] = await _retry_after_release(admitted[0], extra)
        finally:
            await asyncio.gather(*(c.close() for c in [*admitted, extra]), return_exceptions=True)
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

    def line(label: str, figures: dict) -> str:
        return f"{label:<28} median {ms(figures['median'])}  p95 {ms(figures['p95'])}"

    ear = [
        line("mouth-to-ear", result["mouth_to_ear"]),
        line("server V2V (same turns)", result["server_v2v"]),
        line("heard minus server", result["heard_minus_server"]),
        *(line(f"  {part}", figures) for part, figures in result["heard_parts"].items()),
    ]
    return "\n".join(
        [
            f"webrtc {result['profile']}: {result['sessions']} session(s) x {result['turns']} "
            f"turn(s), answered {v2v['n']}, unanswered {result['unanswered_turns']}",
            f"voice-to-voice (client) median {ms(v2v['median'])}  p95 {ms(v2v['p95'])}  "
            f"max {ms(v2v['max'])}",
            *ear,
            f"underruns {under['count']} ({under['stalled_seconds']:.2f} s stalled over "
            f"{under['reply_seconds']:.1f} s of replies), arrival gaps >100 ms "
            f"{under['arrival_gaps_over_100ms']}",
            f"load avg before {load['loadavg_before'][0]:.2f} after {load['loadavg_after'][0]:.2f}",
        ]
    )
