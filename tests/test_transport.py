"""The fastrtc <-> pipecat bridge, frame by frame, through pipecat's own test runner."""

import asyncio
import time

import numpy as np
import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from pipeline.builder import transport_params
from pipeline.config import SessionConfig
from pipeline.transport import FastRTCTransport, PlaybackClock, SessionOutbox

RATE = 24000


def tone(seconds: float, rate: int = RATE) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes()


class Listener:
    """Takes audio out of the outbox the way fastrtc's decode task does, noting when."""

    def __init__(self, outbox: SessionOutbox):
        self.outbox = outbox
        self.chunks: list[tuple[float, np.ndarray]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            item = await self.outbox.get()
            if isinstance(item, tuple):
                self.chunks.append((time.monotonic(), item[1]))

    @property
    def seconds(self) -> float:
        return sum(len(c) for _, c in self.chunks) / RATE

    async def stop(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def make_transport(lead: float = 0.06):
    outbox = SessionOutbox()
    cleared = []
    outbox.clear_downstream = lambda: cleared.append(time.monotonic())
    return FastRTCTransport(transport_params(SessionConfig()), outbox, lead), outbox, cleared


def test_playback_clock_holds_writes_to_real_time_plus_lead():
    now = [100.0]
    clock = PlaybackClock(lead_secs=0.06, time_source=lambda: now[0])
    # The first 60 ms of audio go straight through (the jitter cushion)...
    assert clock.schedule(0.02) == 0
    assert clock.schedule(0.02) == 0
    assert clock.schedule(0.02) == 0
    # ...after that every 20 ms chunk waits 20 ms.
    assert clock.schedule(0.02) == pytest.approx(0.02)
    now[0] += 0.5  # playback caught up and the queue ran dry: start afresh
    assert clock.schedule(0.02) == 0
    assert clock.queued_secs == pytest.approx(0.02)
    clock.reset()
    assert clock.queued_secs == 0


async def play_reply(seconds: float, *then) -> tuple[Listener, list[float]]:
    """A TTS reply of ``seconds`` through the output transport, followed by ``then`` frames."""
    transport, outbox, cleared = make_transport()
    listener = Listener(outbox)
    audio = TTSAudioRawFrame(audio=tone(seconds), sample_rate=RATE, num_channels=1, context_id="c")
    await run_test(
        transport.output(), frames_to_send=[TTSStartedFrame(context_id="c"), audio, *then]
    )
    await listener.stop()
    return listener, cleared


async def test_output_audio_is_paced_in_real_time_not_dumped():
    listener, _ = await play_reply(1.0, TTSStoppedFrame(context_id="c"))
    assert listener.seconds == pytest.approx(1.0, abs=0.05)
    first, last = listener.chunks[0][0], listener.chunks[-1][0]
    # A dump would hand the whole second over at once; paced, the last chunk
    # goes out about when playback reaches it (1 s minus chunk and lead).
    assert last - first > 0.8


async def test_interruption_drops_unplayed_audio_and_clears_fastrtc_queue():
    listener, cleared = await play_reply(
        3.0, SleepFrame(sleep=0.5), InterruptionFrame(), SleepFrame(sleep=0.5)
    )
    assert cleared, "fastrtc's playback queue was not cleared on interruption"
    # About 0.5 s of the 3 s reply went out before the interruption, none after.
    assert 0.3 < listener.seconds < 0.9
    assert all(t <= cleared[0] + 0.1 for t, _ in listener.chunks)


async def test_browser_audio_enters_the_pipeline_as_input_frames():
    transport, _, _ = make_transport()
    pcm = np.arange(320, dtype=np.int16).tobytes()

    async def feed():
        # Before the pipeline starts frames are dropped, not queued forever.
        await transport.input().push_pcm(pcm, 16000)
        await asyncio.sleep(0.3)
        for _ in range(5):
            await transport.input().push_pcm(pcm, 16000)

    feeder = asyncio.create_task(feed())
    down, _ = await run_test(transport.input(), frames_to_send=[SleepFrame(sleep=0.6)])
    await feeder
    audio = [f for f in down if isinstance(f, InputAudioRawFrame)]
    # Two 20 ms browser frames per pipeline frame, in order; the odd one waits for its pair.
    assert len(audio) == 2
    assert audio[0].audio == pcm + pcm and audio[0].sample_rate == 16000


async def test_non_speech_output_frames_pass_through_without_audio():
    transport, outbox, _ = make_transport()
    _down, _ = await run_test(
        transport.output(),
        frames_to_send=[OutputAudioRawFrame(audio=b"", sample_rate=RATE, num_channels=1)],
    )
    assert outbox._queue.empty()
