"""A pipecat transport whose far end is a fastrtc connection.

Input: the session hands browser audio to :meth:`FastRTCInputTransport.push_pcm`.
Output: audio written by pipecat goes into the :class:`SessionOutbox` that the
session's ``emit()`` drains (along with its UI updates and its end).

fastrtc pulls ``emit()`` eagerly into a buffer of its own and paces playback
there, so a transport that handed audio over as fast as the TTS makes it would
let "bot started/stopped speaking", the spoken-text timing and barge-in all run
ahead of what the user hears. :class:`FastRTCOutputTransport` therefore blocks
each write on a real-time clock, staying at most ``lead_secs`` ahead of
playback (a small cushion against scheduling jitter), and on an interruption
drops everything not yet played, in our outbox and in fastrtc's queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    StartFrame,
    UserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from pipeline.observers import OutputGapMetricsData

AudioChunk = tuple[int, np.ndarray]


class SessionOutbox:
    """What the session's ``emit()`` hands to fastrtc, in order: paced audio, UI updates, the end.

    ``clear_audio`` drops queued audio but keeps UI updates, and also empties
    fastrtc's own playback queue through the callback the session installs.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.clear_downstream: Callable[[], None] | None = None

    def put(self, item: object) -> None:
        self._queue.put_nowait(item)

    async def get(self) -> object:
        return await self._queue.get()

    def empty(self) -> bool:
        return self._queue.empty()

    def clear_audio(self) -> None:
        """Drop unplayed audio, keeping UI updates in order."""
        kept = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, tuple):
                kept.append(item)
        for item in kept:
            self._queue.put_nowait(item)
        if self.clear_downstream is not None:
            self.clear_downstream()


class PlaybackClock:
    """Real-time pacing of output audio, allowing ``lead_secs`` of queued audio.

    ``time_source`` is injectable so unit tests can check the schedule
    deterministically.
    """

    def __init__(self, lead_secs: float, time_source: Callable[[], float] = time.monotonic):
        self.lead_secs = lead_secs
        self._now = time_source
        self._play_until = 0.0

    def reset(self) -> None:
        self._play_until = 0.0

    @property
    def queued_secs(self) -> float:
        """Audio handed over but not yet heard."""
        return max(0.0, self._play_until - self._now())

    @property
    def dry_secs(self) -> float:
        """How long playback has had nothing to play (0 while audio is queued or never started)."""
        if not self._play_until:
            return 0.0
        return max(0.0, self._now() - self._play_until)

    def schedule(self, duration_secs: float) -> float:
        """Account for a chunk; returns how long to wait before taking the next one."""
        now = self._now()
        # An empty queue means playback caught up (or never started).
        self._play_until = max(self._play_until, now) + duration_secs
        return max(0.0, self._play_until - now - self.lead_secs)


class FastRTCInputTransport(BaseInputTransport):
    """Browser audio into the pipeline; frames arriving before start are dropped.

    The browser sends 20 ms frames; they enter the pipeline ``frames_per_push``
    at a time. Every pipecat frame costs a queue hop and a task switch per
    processor, per session, whatever its length: two at a time halves that
    cost (an idle session's CPU is mostly this) for 10 ms more latency on
    average, well inside Silero's own 32 ms analysis window.
    """

    def __init__(self, params: TransportParams, frames_per_push: int = 2, **kwargs):
        super().__init__(params, **kwargs)
        self._ready = False
        self._frames_per_push = frames_per_push
        self._pending: list[bytes] = []

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._ready = True

    async def stop(self, frame: EndFrame):
        self._ready = False
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame):
        self._ready = False
        await super().cancel(frame)

    async def push_pcm(self, pcm: bytes, sample_rate: int) -> None:
        if not self._ready:
            return
        self._pending.append(pcm)
        if len(self._pending) < self._frames_per_push:
            return
        audio, self._pending = b"".join(self._pending), []
        await self.push_audio_frame(
            InputAudioRawFrame(audio=audio, sample_rate=sample_rate, num_channels=1)
        )


class FastRTCOutputTransport(BaseOutputTransport):
    """Pipeline audio out to the session's outbox, paced in real time.

    It also reports underruns: a write that finds playback ran dry for at least
    ``MIN_GAP_SECS`` in the middle of a reply (the reply's first audio, after
    the user spoke or interrupted, starts from silence by definition) goes out
    as a :class:`~pipeline.observers.OutputGapMetricsData` metric.
    """

    MIN_GAP_SECS = 0.05

    def __init__(self, params: TransportParams, outbox: SessionOutbox, clock: PlaybackClock, **kw):
        super().__init__(params, **kw)
        self._outbox = outbox
        self._clock = clock
        self._replying = False
        self._lead_in = True

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._outbox.clear_audio()
            self._clock.reset()
        if isinstance(frame, InterruptionFrame | UserStartedSpeakingFrame):
            self._replying = False
            self._lead_in = True

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        if self._lead_in:
            audible = without_lead_in(frame)
            if audible is None:
                return True  # all of it the TTS's lead-in: nothing to hear, nothing to wait for
            frame = audible
            self._lead_in = False
        dry = self._clock.dry_secs
        if self._replying and dry >= self.MIN_GAP_SECS:
            gap = OutputGapMetricsData(processor=self.name, value=dry)
            await self.push_frame(MetricsFrame(data=[gap]))
        self._replying = True
        samples = np.frombuffer(frame.audio, dtype=np.int16)
        self._outbox.put((frame.sample_rate, samples))
        wait = self._clock.schedule(len(samples) / frame.sample_rate / frame.num_channels)
        if wait > 0:
            await asyncio.sleep(wait)
        return True


# A reply's first samples below this (int16, about -40 dBFS) are the TTS's
# lead-in (Piper ~50 ms, ElevenLabs' fake ~40 ms): sent, they would only delay
# the first audible sample by as much, since playback is paced in real time.
LEAD_IN_LEVEL = 330
# Kept before the first loud sample, so the voice does not start with a click.
LEAD_IN_KEEP_SECS = 0.005


def without_lead_in(frame: OutputAudioRawFrame) -> OutputAudioRawFrame | None:
    """``frame`` from just before its first audible sample (None: nothing audible in it)."""
    samples = np.frombuffer(frame.audio, dtype=np.int16)
    loud = np.flatnonzero(np.abs(samples) > LEAD_IN_LEVEL)
    if not len(loud):
        return None
    keep = int(LEAD_IN_KEEP_SECS * frame.sample_rate) * frame.num_channels
    start = max(0, int(loud[0]) - keep)
    start -= start % frame.num_channels
    if start == 0:
        return frame
    return OutputAudioRawFrame(
        audio=samples[start:].tobytes(),
        sample_rate=frame.sample_rate,
        num_channels=frame.num_channels,
    )


def microphone_resampler(frame, rate: int, layout: str):
    """A resampler to ``rate`` whose output frames last as long as ``frame`` (20 ms from a browser).

    fastrtc sizes its resampler's output in *input* samples (960 at 48 kHz),
    which at our 16 kHz is 60 ms: the pipeline got the microphone in 60 ms
    lumps (120 ms once two were batched), so every turn's end and every
    barge-in was seen that much later than it was spoken.
    """
    import av

    size = max(1, round(frame.samples * rate / frame.sample_rate))
    return av.AudioResampler(format="s16", layout=layout, rate=rate, frame_size=size)


class FastRTCTransport(BaseTransport):
    """The pair of processors that connect one fastrtc connection to one pipeline."""

    def __init__(self, params: TransportParams, outbox: SessionOutbox, lead_secs: float = 0.06):
        super().__init__()
        clock = PlaybackClock(lead_secs)
        self._input = FastRTCInputTransport(params, name="fastrtc-in")
        self._output = FastRTCOutputTransport(params, outbox, clock, name="fastrtc-out")

    def input(self) -> FastRTCInputTransport:
        return self._input

    def output(self) -> FastRTCOutputTransport:
        return self._output
