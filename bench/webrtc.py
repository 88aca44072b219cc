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
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

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
from bench.scenarios import BARGE_IN_AFTER_SECS, INTERRUPTION, LONG_QUESTION, QUESTIONS
from testkit.app import AppProcess
from testkit.deploy import DeployProcess
from testkit.webrtc_client import (
    AUDIBLE_RMS,
    CONNECT_TIMEOUT,
    PAGE_MESSAGES,
    SAMPLE_RATE,
    SPEAK_SLACK_SECS,
    TURN_TIMEOUT,
    ConnectionLost,
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


class SessionFailed(Exception):
    """A visitor that could not finish: where it was and why (reported as a failed session).

    ``partial``: what it measured before (the turns it was answered, without the
    server's figures: the export needs the session).
    """

    def __init__(self, reason: str, partial: dict):
        super().__init__(reason)
        self.partial = partial


def session_budget(
    questions: list[tuple[str, np.ndarray]], stagger: float, barge_in: tuple | None
) -> float:
    """The longest one visitor may take, every wait included: beyond it, it failed."""
    speech = sum(len(audio) for _, audio in questions) / SAMPLE_RATE
    turns = len(questions) + (1 if barge_in is not None else 0)
    if barge_in is not None:
        speech += (len(barge_in[1]) + len(barge_in[2])) / SAMPLE_RATE
    per_turn = TURN_TIMEOUT + SPEAK_SLACK_SECS + PAUSE_BETWEEN_TURNS_SECS
    # pick_stt, connect (HTTP + ICE), first UI update, the export, leaving: 30 s each at most.
    return 5 * CONNECT_TIMEOUT + stagger + speech + turns * per_turn


async def _run_client(
    client: WebRTCClient,
    questions: list[tuple[str, np.ndarray]],
    stagger: float = 0.0,
    stt: str | None = None,
    barge_in: tuple[str, np.ndarray, np.ndarray] | None = None,
) -> dict:
    """One visitor's session, bounded: a visitor that cannot go on raises SessionFailed saying
    what it was doing and why (the connection lost, a wait over its bound)."""
    step = ["starting"]
    result: dict[str, Any] = {"name": client.name, "webrtc_id": client.webrtc_id}
    budget = session_budget(questions, stagger, barge_in)
    try:
        return await asyncio.wait_for(
            _talk(client, questions, stagger, stt, barge_in, step, result), budget
        )
    except (TimeoutError, ConnectionLost, OfferRefused, aiohttp.ClientError) as e:
        reason = str(e) or type(e).__name__
        if isinstance(e, TimeoutError) and not str(e):
            reason = f"the whole session took over {budget:.0f} s"
        if client.lost and client.lost not in reason:
            reason += f" ({client.lost})"
        result["late_mic_frames"] = client.mic.late_frames
        raise SessionFailed(f"{client.name} failed while {step[0]}: {reason}", result) from e


async def _talk(
    client: WebRTCClient,
    questions: list[tuple[str, np.ndarray]],
    stagger: float,
    stt: str | None,
    barge_in: tuple[str, np.ndarray, np.ndarray] | None,
    step: list[str],
    result: dict[str, Any],
) -> dict:
    if stt is not None:  # as a visitor picks it in the page before pressing Record
        step[0] = "picking the speech-to-text provider"
        await client.pick_stt(stt)
    started = time.monotonic()
    step[0] = "connecting"
    await client.connect()
    result["worker"] = client.page_worker
    result["connect_seconds"] = time.monotonic() - started
    result["offer_seconds"] = client.offer_seconds
    result["codec"] = client.codec
    step[0] = "waiting for the session to start"
    await client.wait_until_live()
    result["live_seconds"] = time.monotonic() - started
    result["settings_sent"] = client.settings_sent.is_set()
    await client.pause(0.5 + stagger)
    turns: list[dict] = []
    result["turns"] = turns  # so far, should the session fail
    for number, (text, audio) in enumerate(questions, 1):
        step[0] = f"in turn {number}"
        turns.append(heard_figures(await client.turn(text, audio)))
        await client.pause(PAUSE_BETWEEN_TURNS_SECS)
    if barge_in is not None:
        step[0] = "in the barge-in turn"
        result["barge_in"] = await client.barge_in(*barge_in, after_secs=BARGE_IN_AFTER_SECS)
    step[0] = "exporting the session"
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


async def _scrape_metrics(http, url: str, every: float, took: list[float]) -> None:
    """GET ``/metrics`` every ``every`` seconds, as a Prometheus scraping this worker would."""
    while True:
        started = time.monotonic()
        async with http.get(f"{url}/metrics") as r:
            await r.read()
            r.raise_for_status()
        took.append(time.monotonic() - started)
        await asyncio.sleep(max(0.0, every - (time.monotonic() - started)))


class LoopLag:
    """How late this process's event loop runs a timer: the clients' own overload.

    Every aiortc peer's RTP, SRTP, Opus encode and decode, the microphones' pacing
    and the ICE consent answers share this loop; a timer running ``lag`` late means
    every packet waits as long. aioice gives a consent check 0.5 s and closes the
    connection after 6 in a row go unanswered, so sustained lag over 0.5 s kills
    the sessions however well the server does.
    """

    def __init__(self, every: float = 0.05):
        self.every = every
        self.lags: list[float] = []
        self._task = asyncio.create_task(self._measure(), name="loop-lag")

    async def _measure(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.every)
            self.lags.append(time.monotonic() - asked - self.every)

    async def stop(self) -> dict:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return {
            **summarize(self.lags),
            "over_500ms": sum(1 for lag in self.lags if lag > 0.5),
        }


@dataclass
class Servers:
    """What the clients talk to: its URL, and its processes by name (none known for a URL)."""

    url: str
    kind: str
    pids: dict[str, int] = field(default_factory=dict)
    log: str | None = None
    # Where each process serves /metrics (a worker directly, never through the balancer).
    metrics_urls: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving(
    extra_env: dict[str, str], sessions: int, workers: int = 0, url: str | None = None
):
    """The server side of a run: ``url`` as it is, ``python app.py``, or ``python -m deploy``.

    ``workers=0`` is one ``python app.py``; ``workers=N`` is N of them behind
    HAProxy (``python -m deploy``), each allowed a share of the sessions with a
    little room (HAProxy's least-connections placement is not exact).
    """
    if url is not None:
        yield Servers(url.rstrip("/"), f"a deployment at {url}")
    elif workers == 0:
        # One slot more than the visitors: they all come from 127.0.0.1, and one
        # client may hold one connection fewer than there are slots.
        async with AppProcess(max_sessions=max(sessions + 1, 4), extra_env=extra_env) as app:
            yield Servers(
                app.url, "1 process", {"app": app.process.pid}, str(app.log_path), [app.url]
            )
    else:
        per_worker = max(4, math.ceil(sessions / workers) + 2)
        log = Path(tempfile.gettempdir()) / f"voice-lab-bench-deploy-{os.getpid()}.log"
        async with DeployProcess(
            workers, max_sessions=per_worker, extra_env=extra_env, log_path=log
        ) as deploy:
            pids = {name: w["pid"] for name, w in deploy.workers.items()}
            urls = [w["url"] for w in deploy.workers.values()]
            yield Servers(deploy.url, f"{workers} workers behind HAProxy", pids, str(log), urls)


class ServerUsage:
    """CPU seconds and peak RSS of each server process (with its children) while talking.

    Also its UDP receive backlog (Linux): the bytes waiting in its sockets at the
    worst sample and the datagrams the kernel dropped for want of room. A server
    whose event loop falls behind its sessions' RTP shows it here first: the media
    (and the ICE consent answers queued behind it) arrive seconds late, then not at all.
    """

    def __init__(self, pids: dict[str, int], every: float = 0.5):
        self.pids = pids
        self.every = every
        self.peak_mb: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.peak_udp_queued: dict[str, int] = dict.fromkeys(pids, 0)
        self._udp_drops: dict[str, dict[int, int]] = {name: {} for name in pids}
        self._cpu_before = {name: _tree_cpu(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="server-usage", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak_mb[name] = max(self.peak_mb[name], _tree_rss_mb(pid))
                queued = 0
                for inode, (rx_queue, drops) in _udp_sockets(pid).items():
                    queued += rx_queue
                    self._udp_drops[name][inode] = drops
                self.peak_udp_queued[name] = max(self.peak_udp_queued[name], queued)
            self._stop.wait(self.every)

    def stop(self) -> dict[str, dict]:
        self._stop.set()
        self._thread.join()
        return {
            name: {
                "cpu_seconds": None
                if (after := _tree_cpu(pid)) is None or self._cpu_before[name] is None
                else after - self._cpu_before[name],
                "peak_rss_mb": self.peak_mb[name],
                "udp_peak_queued_kb": self.peak_udp_queued[name] / 1024,
                "udp_drops": sum(self._udp_drops[name].values()),
            }
            for name, pid in self.pids.items()
        }


def _udp_sockets(pid: int) -> dict[int, tuple[int, int]]:
    """``{inode: (bytes queued to read, datagrams dropped)}`` of ``pid``'s UDP sockets (Linux)."""
    try:
        mine = {
            int(target[8:-1])
            for fd in os.scandir(f"/proc/{pid}/fd")
            if (target := os.readlink(fd.path)).startswith("socket:[")
        }
    except OSError:
        return {}
    sockets = {}
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = row.split()
                # sl local remote st tx_queue:rx_queue tr tm->when retrnsmt uid timeout inode
                # ref pointer drops
                if int(fields[9]) in mine:
                    rx_queue = int(fields[4].split(":")[1], 16)
                    sockets[int(fields[9])] = (rx_queue, int(fields[12]))
    return sockets


def _total_cpu(use: dict[str, dict]) -> float | None:
    seconds = [u["cpu_seconds"] for u in use.values() if u["cpu_seconds"] is not None]
    return sum(seconds) if seconds else None


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _tree_cpu(pid: int) -> float | None:
    total = None
    for process in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total = (total or 0.0) + times.user + times.system
    return total


def _tree_rss_mb(pid: int) -> float:
    total = 0
    for process in _tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total / 2**20


async def run_webrtc_scenario(
    profile: str,
    sessions: int,
    turns: int,
    *,
    dashboard: bool = True,
    workers: int = 0,
    url: str | None = None,
    extra_env: dict[str, str] | None = None,
    scrape_every: float | None = None,
) -> dict:
    """``sessions`` aiortc clients talk ``turns`` turns each to the server.

    The server is ``python app.py`` (``workers=0``), ``python -m deploy`` with
    ``workers`` workers behind HAProxy, or a running deployment at ``url``
    (then ``profile`` only names it: the deployment runs what it runs). With
    ``turns >= 2`` the last turn asks for a long story and talks over it 1 s in
    (the headless benchmark's barge-in), timed as the client hears it.

    Returns ``{"profile", "sessions", "turns", "voice_to_voice_client": {median,
    p95, max, n}, "barge_in_stop", "per_session": [...], "underruns": {...},
    "servers": {name: {cpu_seconds, peak_rss_mb}}, "machine": {...}}``.
    ``voice_to_voice_client`` is last speech frame sent -> first audible reply
    frame decoded, as the client hears it. The headless benchmark's
    ``first_audio`` (``python -m bench``) is the same measurement without the
    transport, so the transport's cost is about the difference of the two
    medians (same profile, similar load). See the module docstring.

    ``dashboard=False`` never starts the page's dashboard stream, so the app
    renders no HTML or charts: the difference to the default run is what
    rendering the live dashboard costs the voice loop (the headless benchmark
    folds events into state but renders nothing either).

    ``extra_env`` goes to the server's environment (tracing settings, say);
    ``scrape_every`` seconds, each server process's ``/metrics`` is fetched while
    the visitors talk (``scrapes``: how many, and how long each took).
    """
    load_before = os.getloadavg()
    asked = turns - 1 if turns >= 2 else turns
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(asked)]
    # Synthesised up front: a microphone does not pause between turns.
    audio = {q: question_audio(q) for q in questions}
    barge_in = (
        (LONG_QUESTION, question_audio(LONG_QUESTION), question_audio(INTERRUPTION))
        if turns >= 2
        else None
    )
    providers: dict[str, Any] = {}
    scraped: list[float] = []
    async with (
        _profile_env(profile if url is None else "local") as (profile_env, fakes),
        serving({**profile_env, **(extra_env or {})}, sessions, workers, url) as servers,
        contextlib.AsyncExitStack() as https,
    ):
        # Each visitor from a loopback address of its own (as real visitors come
        # from theirs): the app's per-client limits count addresses, not the bench.
        # A deployment elsewhere (``url``) is reached from this host's own address.
        http = [
            await https.enter_async_context(
                http_session(visitor_address(i) if url is None else None)
            )
            for i in range(sessions)
        ]
        api = await page_api(http[0], servers.url)
        clients = [
            WebRTCClient(h, servers.url, api, name=f"session-{i + 1}", dashboard=dashboard)
            for i, h in enumerate(http)
        ]
        usage = ServerUsage(servers.pids)
        loop_lag = LoopLag()
        client_cpu_before = cpu_seconds()
        talk_started = time.monotonic()
        scrapers = [
            asyncio.create_task(_scrape_metrics(http[0], u, scrape_every, scraped))
            for u in (servers.metrics_urls if scrape_every else [])
        ]
        try:
            # Different questions per session, so replies do not line up by accident.
            outcomes = await asyncio.gather(
                *(
                    _run_client(
                        c,
                        [(q, audio[q]) for q in _rotate(questions, i)],
                        stagger=i * STAGGER_SECS,
                        stt=STREAMING_STT[0] if profile == "cloud-sim-streaming" else None,
                        barge_in=barge_in,
                    )
                    for i, c in enumerate(clients)
                ),
                return_exceptions=True,
            )
        finally:
            server_use = usage.stop()
            cpu = {
                "wall_seconds": time.monotonic() - talk_started,
                "client_seconds": cpu_seconds() - client_cpu_before,
                "client_loop_lag": await loop_lag.stop(),
                "servers": server_use,
                # One number for every server process (the telemetry benchmark's "app").
                "app_seconds": _total_cpu(server_use),
            }
            for scraper in scrapers:
                scraper.cancel()
            await asyncio.gather(*scrapers, return_exceptions=True)
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
            partial = outcome.partial if isinstance(outcome, SessionFailed) else {}
            error = str(outcome) if isinstance(outcome, SessionFailed) else repr(outcome)
            per_session.append({"name": client.name, **partial, "error": error})
        else:
            per_session.append(outcome)
    all_turns = [t for s in per_session for t in s.get("turns", [])]
    v2v = [t["voice_to_voice"] for t in all_turns if t.get("voice_to_voice") is not None]
    for s in per_session:
        figures = [t["voice_to_voice"] for t in s.get("turns", []) if t.get("voice_to_voice")]
        s["voice_to_voice_client"] = summarize(figures)
    barge_ins = [s["barge_in"] for s in per_session if "barge_in" in s]
    workers_used: dict[str, int] = {}
    for s in per_session:
        if s.get("worker"):
            workers_used[s["worker"]] = workers_used.get(s["worker"], 0) + 1
    return {
        "profile": profile,
        "server": servers.kind,
        "sessions": sessions,
        "turns": turns,
        "dashboard": dashboard,
        "voice_to_voice_client": summarize(v2v),
        "barge_in_stop": summarize([b.get("barge_in_stop") for b in barge_ins]),
        **mouth_to_ear_figures(all_turns),
        "unanswered_turns": sum(1 for t in all_turns if t.get("voice_to_voice") is None),
        "sessions_failed": sum(1 for s in per_session if "error" in s),
        "sessions_per_worker": workers_used,
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
        "scrapes": {"every": scrape_every, **summarize(scraped)} if scrape_every else None,
        "audible_rms_threshold": AUDIBLE_RMS,
        "app_log": servers.log,
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
        },
    }


def _rotate(items: list, by: int) -> list:
    by %= max(len(items), 1)
    return items[by:] + items[:by]


async def measure_app_startup(extra_env: dict[str, str] | None = None) -> dict:
    """Seconds from ``python app.py`` starting to its models being warm and to HTTP 200 on ``/``.

    ``models_ready_seconds`` is when the app logs "Voice Lab ready in" (end of
    ``prepare_runtime``: offline guards, loopback ICE, all three local models
    loaded and warmed); the app only builds the page and starts serving after
    that, so a visitor can start a session as soon as ``/`` answers:
    ``http_ready_seconds`` is the figure that matters to a visitor.
    ``models_ready_seconds`` includes importing gradio, fastrtc and pipecat.
    """
    load_before = os.getloadavg()
    async with AppProcess(max_sessions=4, extra_env=extra_env) as app:
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
    lag = result["cpu"]["client_loop_lag"]

    def line(label: str, figures: dict) -> str:
        return f"{label:<28} median {ms(figures['median'])}  p95 {ms(figures['p95'])}"

    ear = [
        line("mouth-to-ear", result["mouth_to_ear"]),
        line("server V2V (same turns)", result["server_v2v"]),
        line("heard minus server", result["heard_minus_server"]),
        *(line(f"  {part}", figures) for part, figures in result["heard_parts"].items()),
    ]
    servers = [
        f"  {name}: CPU {u['cpu_seconds']:.1f} s, peak RSS {u['peak_rss_mb']:.0f} MB, "
        f"UDP backlog peak {u['udp_peak_queued_kb']:.0f} KB, dropped {u['udp_drops']}"
        if u["cpu_seconds"] is not None
        else f"  {name}: gone before the end"
        for name, u in result["cpu"]["servers"].items()
    ]
    placed = ", ".join(f"{w} {n}" for w, n in sorted(result["sessions_per_worker"].items()))
    return "\n".join(
        [
            f"webrtc {result['profile']} on {result['server']}: {result['sessions']} session(s) x "
            f"{result['turns']} turn(s), answered {v2v['n']}, unanswered "
            f"{result['unanswered_turns']}, sessions failed {result['sessions_failed']}"
            + (f" (placed: {placed})" if placed else ""),
            f"voice-to-voice (client) median {ms(v2v['median'])}  p95 {ms(v2v['p95'])}  "
            f"max {ms(v2v['max'])}",
            line("barge-in stop (client)", result["barge_in_stop"]),
            *ear,
            f"underruns {under['count']} ({under['stalled_seconds']:.2f} s stalled over "
            f"{under['reply_seconds']:.1f} s of replies), arrival gaps >100 ms "
            f"{under['arrival_gaps_over_100ms']}",
            f"CPU: clients {result['cpu']['client_seconds']:.1f} s over "
            f"{result['cpu']['wall_seconds']:.0f} s; their event loop late by median "
            f"{ms(lag['median'])}, p95 {ms(lag['p95'])}, max {ms(lag['max'])}",
            *servers,
            f"load avg before {load['loadavg_before'][0]:.2f} after {load['loadavg_after'][0]:.2f}",
            *(f"  failed: {s['error']}" for s in result["per_session"] if "error" in s),
        ]
    )


def compare_runs(runs: list[dict]) -> dict:
    """Side by side: each run's V2V, barge-in, underruns and server use, against the first.

    The first run is the baseline (one session on one process, with ``--baseline``):
    ``v2v_p95_over_baseline`` is the target's "p95 within 15 % of one session".
    """
    base = runs[0]["voice_to_voice_client"]["p95"]
    rows = []
    for run in runs:
        v2v = run["voice_to_voice_client"]
        servers = run["cpu"]["servers"]
        cpu = [u["cpu_seconds"] for u in servers.values() if u["cpu_seconds"] is not None]
        rows.append(
            {
                "server": run["server"],
                "sessions": run["sessions"],
                "v2v_median": v2v["median"],
                "v2v_p95": v2v["p95"],
                "v2v_p95_over_baseline": None
                if not base or v2v["p95"] is None
                else v2v["p95"] / base - 1,
                "barge_in_stop_p95": run["barge_in_stop"]["p95"],
                "underruns": run["underruns"]["count"],
                "stalled_seconds": run["underruns"]["stalled_seconds"],
                "unanswered_turns": run["unanswered_turns"],
                "server_cpu_seconds": sum(cpu) if cpu else None,
                "server_cpu_per_session": sum(cpu) / run["sessions"] if cpu else None,
                "per_worker": servers,
            }
        )
    return {"baseline": runs[0]["server"] + f", {runs[0]['sessions']} session(s)", "rows": rows}


def format_comparison(comparison: dict) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    lines = [
        f"{'server':<28} {'sess':>4} {'V2V p50':>8} {'p95':>6} {'vs base':>8} {'stop p95':>8}"
        f" {'underruns':>9} {'CPU/sess':>8}  per worker (CPU s, peak RSS MB)"
    ]
    for row in comparison["rows"]:
        over = row["v2v_p95_over_baseline"]
        per_worker = ", ".join(
            f"{name} {u['cpu_seconds'] or 0:.0f}/{u['peak_rss_mb']:.0f}"
            for name, u in row["per_worker"].items()
        )
        cpu = row["server_cpu_per_session"]
        lines.append(
            f"{row['server']:<28} {row['sessions']:>4} {ms(row['v2v_median']):>8}"
            f" {ms(row['v2v_p95']):>6} {'-' if over is None else f'{over:+.0%}':>8}"
            f" {ms(row['barge_in_stop_p95']):>8} {row['underruns']:>9}"
            f" {'-' if cpu is None else f'{cpu:.2f} s':>8}  {per_worker}"
        )
    return "\n".join(lines)
