"""Closing the tab (fastrtc calls ``shutdown()``) leaves nothing of the session behind."""

import asyncio
import gc
import threading
import time
import weakref

import pytest

from pipeline.session import VoiceSession
from testkit.driver import SessionDriver
from testkit.speech import speech_pcm
from ui import state

pytestmark = pytest.mark.slow

CYCLES = 20


def other_tasks() -> set[asyncio.Task]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def gone_within(predicate, seconds: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``seconds``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > seconds:
            return float("inf")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_twenty_connect_disconnect_cycles_leave_no_tasks_threads_or_sessions(models):
    question = speech_pcm("Tell me about the moon.")
    baseline_tasks = other_tasks()
    thread_counts, sessions = [], []
    for cycle in range(CYCLES):
        session = VoiceSession(
            reduce=state.reduce, initial_state=state.initial_state, models=models
        )
        sessions.append(weakref.ref(session))
        driver = SessionDriver(session)
        await driver.__aenter__()
        if cycle % 4 == 0:
            # Leave mid-reply: the LLM, TTS and paced output are all busy.
            await driver.play(question)
            await driver.play_silence_until(lambda d=driver: d.events("BotStartedSpeaking"), 30)
        await driver.close()

        left = await gone_within(lambda: not (other_tasks() - baseline_tasks), 2.0)
        assert left <= 2.0, f"cycle {cycle}: tasks still running 2 s after close: " + ", ".join(
            sorted(t.get_name() for t in other_tasks() - baseline_tasks)
        )
        del session, driver
        gc.collect()
        thread_counts.append(threading.active_count())

    def all_collected() -> bool:
        gc.collect()
        return all(ref() is None for ref in sessions)

    collected_after = await gone_within(all_collected, 2.0)
    assert collected_after <= 2.0, "a closed session is still referenced 2 s after closing"
    # Worker pools (asyncio's default executor) may grow to their limit once;
    # after that the count must stay flat, not grow with every connection.
    assert max(thread_counts[5:]) <= thread_counts[4] + 2, thread_counts


async def test_a_browser_that_stops_sending_audio_mid_reply_is_gone_within_two_seconds(models):
    """A closed tab says no goodbye: its audio just stops (WebRTC notices ~30 s later)."""
    baseline_tasks = other_tasks()
    session = VoiceSession(reduce=state.reduce, initial_state=state.initial_state, models=models)
    driver = SessionDriver(session)
    await driver.__aenter__()
    try:
        await driver.play(speech_pcm("Tell me about the moon."))
        await driver.play_silence_until(lambda: driver.events("BotStartedSpeaking"), 30)
        tab_closed_at = time.monotonic()
        await asyncio.wait_for(session.finished.wait(), 2.0)
        assert time.monotonic() - tab_closed_at < 2.0
        # fastrtc is told to close the stream, so the connection's slot is freed.
        await driver.wait_for(lambda: driver.received.closed, 1.0)
        left = await gone_within(lambda: not (other_tasks() - baseline_tasks - driver.tasks), 0.5)
        assert left <= 0.5, sorted(t.get_name() for t in other_tasks() - baseline_tasks)
    finally:
        await driver.close()
