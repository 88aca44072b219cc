"""Voice-to-voice benchmark: spoken turns through the same session handler the browser uses.

For each turn a Piper-made question is streamed in real time into a
``VoiceSession``; we wait for the reply and read two clocks:

- ``voice_to_voice``: pipecat's ``UserBotLatencyObserver`` (user falls silent
  -> BotStartedSpeaking), with its named contributions;
- ``first_audio``: what the client saw, from the last frame of speech sent to
  the first audible reply chunk out of ``emit()`` (includes the trailing
  silence in the question audio, so it reads a little higher).
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field

from bench.driver import SessionDriver
from bench.speech import speech_pcm
from pipeline.observers import UIEventObserver
from ui.state import percentile

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


@dataclass
class TurnResult:
    question: str
    transcript: str
    reply: str
    voice_to_voice: float | None
    first_audio: float | None
    contributions: dict[str, float] = field(default_factory=dict)


def summarize(values: list[float]) -> dict[str, float | int | None]:
    """median, p95, max and count of a list of seconds (None when empty)."""
    if not values:
        return {"median": None, "p95": None, "max": None, "n": 0}
    return {
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "max": max(values),
        "n": len(values),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_turn(driver: SessionDriver, question: str, timeout: float = 30.0) -> TurnResult:
    audio = speech_pcm(question)
    before = len(driver.events("BotTurnText"))
    latencies_before = len(driver.events("LatencyMeasured"))
    transcripts_before = len(driver.events("UserTurnText"))
    spoken_until = await driver.play(audio)
    await driver.play_silence_until(
        lambda: len(driver.events("BotTurnText")) > before, timeout=timeout
    )
    latency = driver.events("LatencyMeasured")[latencies_before:]
    audible = driver.received.audible_after(spoken_until)
    contributions: dict[str, float] = {}
    for label, seconds in latency[0].contributions if latency else ():
        contributions[label] = contributions.get(label, 0.0) + seconds
    return TurnResult(
        question=question,
        transcript=" ".join(e.text for e in driver.events("UserTurnText")[transcripts_before:]),
        reply=driver.events("BotTurnText")[-1].text,
        voice_to_voice=latency[0].seconds if latency else None,
        first_audio=(audible[0] - spoken_until) if audible else None,
        contributions=contributions,
    )


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


def _microseconds(values: list[float]) -> dict:
    figures = summarize(values)
    return {k: (v * 1e6 if isinstance(v, float) else v) for k, v in figures.items()}


async def run_local(turns: int, *, models, session_factory, dashboard: bool = True) -> dict:
    """Run ``turns`` spoken turns in one session; returns the JSON-ready result."""
    load_before = os.getloadavg()
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    results: list[TurnResult] = []
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(turns)]
    for question in questions:  # synthesised up front: the mic must not pause between turns
        speech_pcm(question)
    session = session_factory()
    with observer_cost() as observer_calls:
        async with SessionDriver(session) as driver:
            for question in questions:
                results.append(await run_turn(driver, question))
    wall = time.perf_counter() - started

    labels = sorted({label for r in results for label in r.contributions})
    return {
        "profile": "local",
        "dashboard": dashboard,
        "ui_event_delay": summarize(list(session.ui_delays)),
        "observer_cost_us": _microseconds(observer_calls),
        "turns": [asdict(r) for r in results],
        "voice_to_voice": summarize([r.voice_to_voice for r in results if r.voice_to_voice]),
        "first_audio": summarize([r.first_audio for r in results if r.first_audio]),
        "contributions": {
            label: summarize([r.contributions[label] for r in results if label in r.contributions])
            for label in labels
        },
        "peak_rss_mb": peak_rss_mb(),
        "cpu_seconds": cpu_seconds() - cpu_before,
        "wall_seconds": wall,
        "model_load_seconds": asdict(models.load_times),
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
