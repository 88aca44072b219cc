"""What the benchmark does: sessions that ask spoken questions, and a barge-in to finish.

Each session is driven like a browser (:class:`SessionDriver`): Piper-made
questions streamed in real time, silence while listening, a short pause
after each reply. With ``turns >= 2`` the last turn asks for a long story
and speaks over it 1 s into the reply. Concurrent sessions start staggered
by a fraction of a second so they do not all speak at once.

Per turn we read:

- ``voice_to_voice``: pipecat's ``UserBotLatencyObserver`` (user falls silent
  -> BotStartedSpeaking), with its named contributions;
- ``first_audio``: what the client saw, from the last frame of speech sent to
  the first audible reply chunk out of ``emit()`` (includes the trailing
  silence in the question audio, so it reads a little higher);
- ``pipeline_overhead`` (cloud-sim): voice-to-voice minus the provider
  floor: the STT, LLM and TTS latencies the fakes injected for the turn, and
  the endpointing that cannot overlap them. Serial turns wait out the whole
  endpointing first; speculative ones start transcribing at the pause, so
  their floor is max(endpointing, pause detection + STT) + LLM + TTS (also
  given without the turns Smart Turn held for its fallback timeout: a
  verdict, not overhead);
- ``barge_in_stop`` (barge-in turn): from the onset of the user's voice to
  the end of the last reply audio the client received;
- ``underruns``: gaps in the reply's paced audio (see :func:`figures.underruns`);
- ``smart_turn_fallback``: Smart Turn's last verdict before the turn ended was
  "unfinished", so its fallback timeout ended the turn (``slow_turn_decision``:
  the decision took over a second, which a verdict queued behind others also does);
- ``interim_before_final`` / ``interim_while_speaking``: the question's interim
  words reached the session's events before its final transcript / before its
  voice ended (what the live view shows while the user speaks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from bench import figures
from pipeline.config import SessionConfig
from pipeline.observers import UIEventObserver
from pipeline.speculation import PAUSE_WINDOWS, SILERO_WINDOW_SECS
from testkit.driver import SessionDriver
from testkit.speech import SAMPLE_RATE, silence, speech_pcm

log = logging.getLogger("bench")

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you suggest a name for a black cat?",
    "What colour is the sky on a clear day?",
    "Why do leaves fall in autumn?",
    "What is two plus three?",
    "Tell me a fun fact about the ocean.",
    "What should I cook for dinner tonight?",
]
LONG_QUESTION = "Tell me a long story about a brave knight and a dragon."
INTERRUPTION = "Stop, please wait."
BARGE_IN_AFTER_SECS = 1.0  # into the reply
# A listener's pause after the reply's audio ends, before the next question. Longer
# than pipecat's 0.35 s "bot stopped speaking" wait: sooner would be a barge-in.
PAUSE_SECS = 0.6
STAGGER_SECS = 0.3  # between session starts
TURN_TIMEOUT_SECS = 40.0
# pipecat's "turn detection" (transcript -> LLM request) this long is a slow turn decision:
# Smart Turn said "unfinished" and its fallback ended the turn, or its verdict queued.
SLOW_DECISION_SECS = 1.0


def script(session: int, turns: int) -> list[tuple[str, str]]:
    """(kind, text) per turn; each session starts at a different question."""
    lines = [("question", QUESTIONS[(session + k) % len(QUESTIONS)]) for k in range(turns)]
    if turns >= 2:
        lines[-1] = ("barge-in", LONG_QUESTION)
    return lines


def all_lines() -> list[str]:
    return [*QUESTIONS, LONG_QUESTION, INTERRUPTION]


@dataclass
class Profile:
    """How sessions are made and what their audio is; the cloud-sim profile adds attribution."""

    name: str
    new_session: Callable[[int], object]  # session index -> VoiceSession
    say: Callable[[str, str], np.ndarray]  # (text, utterance key) -> 16 kHz int16 audio
    # (monotonic start, end) of a session's start-up -> its TTS connections (cloud-sim)
    connections_opened: Callable[[float, float], set[int]] | None = None
    # after the run: (TurnWindow, connections) -> injected latencies (cloud-sim)
    attribution: Callable[[], object] | None = None
    # Its STT shows interim words while the user speaks.
    interim: bool = True


@dataclass
class TurnResult:
    session: int
    index: int
    kind: str  # "question" | "barge-in"
    question: str
    transcript: str = ""
    reply: str = ""
    voice_to_voice: float | None = None
    first_audio: float | None = None
    contributions: dict[str, float] = field(default_factory=dict)
    injected: dict[str, float | None] | None = None
    pipeline_overhead: float | None = None
    # Smart Turn judged the question unfinished: the turn ended on the fallback timeout.
    smart_turn_fallback: bool = False
    # The turn decision took over SLOW_DECISION_SECS (a fallback, or a verdict that queued).
    slow_turn_decision: bool = False
    # Smart Turn's inference time per verdict of this turn (seconds, as pipecat measures it).
    smart_turn_inference: list[float] = field(default_factory=list)
    # Interim words reached the session's events before the final transcript, and before
    # the question's voice ended (None: this profile's STT sends no interim words).
    interim_before_final: bool | None = None
    interim_while_speaking: bool | None = None
    barge_in_stop: float | None = None
    underruns: int = 0
    underrun_seconds: float = 0.0
    error: str | None = None
    # time.monotonic() bounds, for attribution (not in the JSON)
    window: tuple[float, float] = (0.0, 0.0)
    key: str = ""


@dataclass
class SessionResult:
    index: int
    turns: list[TurnResult] = field(default_factory=list)
    ui_delays: list[float] = field(default_factory=list)
    ttfb: list[tuple[str, str, str | None, float]] = field(default_factory=list)
    startup_seconds: float | None = None
    tts_connections: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    # Speculative turns: how many started, and each one's end (SpeculationEnded events).
    speculations_started: int = 0
    speculations: list = field(default_factory=list)


# -- one turn ------------------------------------------------------------------------------


def _wall(monotonic: float) -> float:
    """A time.monotonic() value on time.time()'s clock (events carry wall time)."""
    return monotonic - time.monotonic() + time.time()


def _events_between(driver: SessionDriver, kind: str, start: float, end: float) -> list:
    lo, hi = _wall(start), _wall(end)
    return [e for e in driver.by_kind[kind] if lo <= e.t <= hi]


def _events_since(driver: SessionDriver, kind: str, start: float, until_wall: float) -> list:
    lo = _wall(start)
    return [e for e in driver.by_kind[kind] if lo <= e.t <= until_wall]


def _read_turn_decision(turn: TurnResult, driver: SessionDriver, end: float) -> None:
    """Smart Turn's verdicts until the turn ended; the last one says whether the timeout ended it.

    Smart Turn judges each pause; "unfinished" leaves the turn to the fallback
    timeout, which ends it with no verdict of its own. So a turn whose last
    verdict before it ended was "unfinished" waited out the timeout.
    """
    stopped = _events_between(driver, "UserStoppedSpeaking", turn.window[0], end)
    until = stopped[0].t if stopped else _wall(end)
    verdicts = _events_since(driver, "TurnDecision", turn.window[0], until)
    turn.smart_turn_fallback = bool(verdicts) and not verdicts[-1].complete
    turn.smart_turn_inference = [v.ms / 1000 for v in verdicts]
    turn.slow_turn_decision = turn.contributions.get("turn detection", 0.0) > SLOW_DECISION_SECS


def _read_interim(turn: TurnResult, driver: SessionDriver, voice_end: float, end: float) -> None:
    """Did the question's words show while it was spoken (interim), before the final transcript?"""
    said = _events_between(driver, "UserTranscript", turn.window[0], end)
    final = next((e.t for e in said if e.final), _wall(end))
    interim = [e.t for e in said if not e.final and e.text.strip() and e.t < final]
    turn.interim_before_final = bool(interim)
    turn.interim_while_speaking = bool(interim) and interim[0] <= _wall(voice_end)


def _read_turn(
    turn: TurnResult, driver: SessionDriver, spoken_until: float, end: float, voice_end: float
) -> None:
    """Fill in what the session reported between the turn's start and ``end``."""
    start = turn.window[0]
    latency = _events_between(driver, "LatencyMeasured", start, end)
    if latency:
        turn.voice_to_voice = latency[0].seconds
        for label, seconds in latency[0].contributions:
            turn.contributions[label] = turn.contributions.get(label, 0.0) + seconds
    audible = [t for t in driver.received.audible_after(spoken_until) if t <= end]
    turn.first_audio = (audible[0] - spoken_until) if audible else None
    said = _events_between(driver, "UserTurnText", start, end)
    turn.transcript = " ".join(e.text for e in said)
    replies = [e for e in _events_between(driver, "BotTurnText", start, end) if e.text]
    turn.reply = replies[0].text if replies else ""
    gaps = figures.underruns([c for c in driver.received.audio_after(spoken_until) if c[0] <= end])
    turn.underruns, turn.underrun_seconds = gaps.count, gaps.gap_seconds
    _read_turn_decision(turn, driver, end)
    _read_interim(turn, driver, voice_end, end)


def _replied_since(driver: SessionDriver, start: float) -> Callable[[], bool]:
    """A cheap test (polled every 20 ms): has a reply been completed since ``start``?

    An empty BotTurnText (an assistant turn closed by an interruption before it
    said anything) is not a reply.
    """
    wall = _wall(start)
    replies = driver.by_kind["BotTurnText"]
    return lambda: any(e.text and e.t >= wall for e in replies[-3:])


async def ask(driver: SessionDriver, turn: TurnResult, audio: np.ndarray) -> None:
    """Say the question, listen until the reply has played, pause like a listener."""
    start = time.monotonic()
    turn.window = (start, start)
    spoken_until = await driver.play(audio)
    voice_end = spoken_until - figures.speech_tail(audio, SAMPLE_RATE)
    await driver.play_silence_until(_replied_since(driver, start), TURN_TIMEOUT_SECS)
    # The reply's text is complete before its audio (under load, by up to a second).
    await driver.play_silence_until(
        lambda: time.monotonic() - driver.received.played_until() >= PAUSE_SECS,
        TURN_TIMEOUT_SECS,
    )
    end = time.monotonic()
    turn.window = (start, end)
    _read_turn(turn, driver, spoken_until, end, voice_end)


async def ask_and_interrupt(
    driver: SessionDriver, turn: TurnResult, audio: np.ndarray, interruption: np.ndarray
) -> None:
    """Ask for a long answer, speak over it ``BARGE_IN_AFTER_SECS`` in, time the stop."""
    start = time.monotonic()
    turn.window = (start, start)
    spoken_until = await driver.play(audio)
    voice_end = spoken_until - figures.speech_tail(audio, SAMPLE_RATE)
    await driver.play_silence_until(
        lambda: driver.received.last_audible_at > spoken_until, TURN_TIMEOUT_SECS
    )
    await driver.play(silence(BARGE_IN_AFTER_SECS))
    barge_at = time.monotonic()
    onset = barge_at + figures.speech_onset(interruption, SAMPLE_RATE)
    finished_early = _replied_since(driver, start)()
    await driver.play(interruption)
    cut_after = _wall(barge_at)
    await driver.play_silence_until(  # the reply was cut (its spoken part kept, maybe empty)
        lambda: any(e.t >= cut_after for e in driver.by_kind["BotTurnText"][-3:]),
        TURN_TIMEOUT_SECS,
    )
    await driver.play(silence(figures.STOP_GAP_SECS + 0.3))  # so the stop is followed by quiet
    turn.window = (start, barge_at)
    # The reply is read up to the user's voice; what follows is the cut and the next answer.
    _read_turn(turn, driver, spoken_until, onset, voice_end)
    cut = [e for e in _events_between(driver, "BotTurnText", start, time.monotonic()) if e.text]
    turn.reply = cut[0].text if cut else ""
    if finished_early:
        turn.error = "the reply ended before the interruption"
        return
    stopped = figures.audio_stop_time(driver.received.audio, since=onset - figures.STOP_GAP_SECS)
    turn.barge_in_stop = max(0.0, stopped - onset) if stopped is not None else 0.0


# -- one session ---------------------------------------------------------------------------


async def run_session(
    profile: Profile, index: int, turns: int, start_lock: asyncio.Lock, delay: float
) -> SessionResult:
    """One visitor: connect (one session at a time), then the scripted turns."""
    result = SessionResult(index)
    lines = script(index, turns)
    audio = [profile.say(text, f"s{index}t{k}") for k, (_, text) in enumerate(lines)]
    interruption = profile.say(INTERRUPTION, f"s{index}t{len(lines) - 1}i")
    await asyncio.sleep(delay)
    session = profile.new_session(index)
    driver = SessionDriver(session)
    async with start_lock:
        opened = time.monotonic()
        try:
            await driver.__aenter__()
        except Exception as e:  # counted, not fatal: the other sessions carry on
            result.errors.append(f"session {index} did not start: {e!r}")
            await driver.close()
            return result
        ready = time.monotonic()
    result.startup_seconds = ready - opened
    if profile.connections_opened is not None:
        result.tts_connections = profile.connections_opened(opened, ready)
    try:
        for k, (kind, text) in enumerate(lines):
            turn = TurnResult(index, k, kind, text, key=f"s{index}t{k}")
            result.turns.append(turn)
            try:
                if kind == "barge-in":
                    await ask_and_interrupt(driver, turn, audio[k], interruption)
                else:
                    await ask(driver, turn, audio[k])
                if not profile.interim:
                    turn.interim_before_final = turn.interim_while_speaking = None
            except TimeoutError:
                turn.error = "no reply within the time limit"
                result.errors.append(f"session {index} turn {k}: {turn.error}")
                break
    finally:
        result.ui_delays = list(session.ui_delays)
        result.ttfb = [
            (e.stage, e.service, e.model, e.seconds) for e in driver.events("ServiceTTFB")
        ]
        result.errors += [e.message for e in driver.events("ErrorReported")]
        result.speculations_started = len(driver.events("SpeculationStarted"))
        result.speculations = driver.events("SpeculationEnded")
        await driver.close()
    return result


# -- a run: N sessions ---------------------------------------------------------------------


@contextlib.contextmanager
def observer_cost():
    """Time every call of the dashboard observer (seconds per frame push)."""
    durations: list[float] = []
    original = UIEventObserver.on_push_frame

    async def timed(self, data):
        start = time.perf_counter()
        await original(self, data)
        durations.append(time.perf_counter() - start)

    UIEventObserver.on_push_frame = timed
    try:
        yield durations
    finally:
        UIEventObserver.on_push_frame = original


def _attribute(profile: Profile, results: list[SessionResult]) -> None:
    """Cloud-sim: injected latencies per turn, and the pipeline overhead left over."""
    if profile.attribution is None:
        return
    from bench.cloudsim import TurnWindow

    injected = profile.attribution()
    for session in results:
        for turn in session.turns:
            window = TurnWindow(session.index, turn.key, *turn.window)
            turn.injected = injected.for_turn(window, session.tts_connections)
            floor = provider_floor(
                turn.contributions.get("endpointing wait"),
                turn.injected,
                streaming=profile.name == "cloud-sim-streaming",
            )
            if turn.voice_to_voice is not None and floor is not None:
                turn.pipeline_overhead = turn.voice_to_voice - floor


def provider_floor(
    endpointing: float | None, injected: dict, *, streaming: bool = False
) -> float | None:
    """The least voice-to-voice the injected latencies allow (None if one is unknown).

    Serial: endpointing, then each provider in turn. Speculative, segmented STT:
    the transcription starts at the pause, so it overlaps the endpointing.
    Speculative, streaming STT: the LLM starts at the pause on the partial
    transcript, while the committed one (its injected delay after the VAD's
    commit) is what confirms the turn.
    """
    if endpointing is None or any(v is None for v in injected.values()):
        return None
    stt, llm, tts = injected["stt"], injected["llm"], injected["tts"]
    if not SessionConfig().speculative:
        return endpointing + stt + llm + tts
    heard_pause = PAUSE_WINDOWS * SILERO_WINDOW_SECS
    if streaming:
        return max(endpointing + stt, heard_pause + llm) + tts
    return max(endpointing, heard_pause + stt) + llm + tts


async def run_sessions(profile: Profile, sessions: int, turns: int) -> dict:
    """``sessions`` concurrent sessions of ``turns`` turns; returns the JSON-ready run."""
    for text in all_lines():  # synthesised up front: the mic must not pause between turns
        speech_pcm(text)
    load_before = os.getloadavg()
    cpu_before = figures.cpu_seconds()
    loop_cpu_before = time.thread_time()  # this thread runs the event loop every session shares
    started = time.perf_counter()
    start_lock = asyncio.Lock()
    with observer_cost() as observer_calls:
        async with figures.rss_sampler() as rss:
            outcomes = await asyncio.gather(
                *(
                    run_session(profile, i, turns, start_lock, i * STAGGER_SECS)
                    for i in range(sessions)
                ),
                return_exceptions=True,
            )
    results = [_as_result(i, outcome) for i, outcome in enumerate(outcomes)]
    wall = time.perf_counter() - started
    cpu = figures.cpu_seconds() - cpu_before
    loop_cpu = time.thread_time() - loop_cpu_before
    _attribute(profile, results)

    from bench.report import pooled_figures, session_figures

    run = {
        "sessions": sessions,
        "turns_per_session": turns,
        **pooled_figures(results),
        "observer_cost_us": figures.microseconds(observer_calls),
        "cpu_seconds": cpu,
        "cpu_seconds_per_session": cpu / sessions,
        "loop_cpu_seconds": loop_cpu,
        "loop_busy": loop_cpu / wall,
        "rss_baseline_mb": rss["baseline_mb"],
        "peak_rss_mb": rss["peak_mb"],
        "rss_increment_per_session_mb": (rss["peak_mb"] - rss["baseline_mb"]) / sessions,
        "lifetime_peak_rss_mb": figures.lifetime_peak_rss_mb(),
        "wall_seconds": wall,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "per_session": [session_figures(r) for r in results],
        "turns": [_turn_json(t) for r in results for t in r.turns],
    }
    return run


def _as_result(index: int, outcome: SessionResult | BaseException) -> SessionResult:
    """A session that crashed is reported as such, with whatever it had done lost."""
    if isinstance(outcome, SessionResult):
        return outcome
    log.error("session %d failed", index, exc_info=outcome)
    return SessionResult(index, errors=[f"session {index} failed: {outcome!r}"])


def _turn_json(turn: TurnResult) -> dict:
    data = asdict(turn)
    data.pop("window")
    data.pop("key")
    return data
