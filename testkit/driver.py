"""A headless client for a :class:`VoiceSession`: drives it the way fastrtc does, without a browser.

Feeds 20 ms frames on a real-time clock into ``receive()``, pulls ``emit()``
continuously into a list (as fastrtc's decode task does) and records when reply
audio arrived, so tests and the benchmark can ask what a listener would hear.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from fastrtc import CloseStream

from pipeline.compat.fastrtc import set_clear_queue
from pipeline.session import VoiceSession

FRAME_SECS = 0.02


AUDIBLE = 300  # peak below this is the padding silence


@dataclass
class Received:
    audio: list[tuple[float, int, np.ndarray]] = field(default_factory=list)
    closed: bool = False
    cleared: int = 0
    # When the latest chunk carrying sound arrived: a cheap check for polling loops.
    last_audible_at: float = 0.0

    def add(self, at: float, rate: int, samples: np.ndarray) -> None:
        self.audio.append((at, rate, samples))
        if np.abs(samples).max(initial=0) > AUDIBLE:
            self.last_audible_at = at

    def audio_after(self, t: float) -> list[tuple[float, int, np.ndarray]]:
        return [a for a in self.audio if a[0] >= t]

    def played_until(self) -> float:
        """When the audio received so far ends (time.monotonic()), if played as it arrived."""
        end = 0.0
        for arrived, rate, samples in self.audio[-50:]:
            end = max(end, arrived) + len(samples) / rate
        return end

    def audible_after(self, t: float, threshold: int = AUDIBLE) -> list[float]:
        """Times of chunks after ``t`` that carry sound (not the padding silence)."""
        return [ts for ts, _, s in self.audio_after(t) if np.abs(s).max(initial=0) > threshold]


class SessionDriver:
    def __init__(self, session: VoiceSession):
        self.session = session
        self.received = Received()
        self._tasks: list[asyncio.Task] = []
        # Events by kind, kept as they are reported: polling loops (every
        # 20 ms, per session) must not scan the whole event log.
        self.by_kind: dict[str, list] = defaultdict(list)

    async def __aenter__(self) -> SessionDriver:
        # What fastrtc's AudioCallback installs: its clear-queue hook.
        set_clear_queue(self.session, self._on_clear)
        report = self.session.report

        def indexed_report(event) -> None:
            self.by_kind[event.kind].append(event)
            report(event)

        # Before start_up: the pipeline's observers are handed this bound name.
        self.session.report = indexed_report
        self._tasks.append(asyncio.create_task(self.session.start_up(), name="driver-startup"))
        self._tasks.append(asyncio.create_task(self._pull(), name="driver-pull"))
        await self.wait_for(lambda: self.session.generation is not None and self._started(), 30)
        return self

    @property
    def tasks(self) -> set[asyncio.Task]:
        """The driver's own tasks (feeding ``start_up`` and pulling ``emit``)."""
        return set(self._tasks)

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _started(self) -> bool:
        return any(e.kind == "SessionStarted" for e in self.session.events)

    def _on_clear(self) -> None:
        self.received.cleared += 1

    async def _pull(self) -> None:
        while True:
            # As fastrtc's decode task does: a timeout per call, None is "nothing yet".
            try:
                item = await asyncio.wait_for(self.session.emit(), 60)
            except TimeoutError:
                continue
            now = time.monotonic()
            if isinstance(item, tuple):
                self.received.add(now, item[0], item[1])
            elif isinstance(item, CloseStream):
                self.received.closed = True
                return

    async def play(self, samples: np.ndarray, sample_rate: int = 16000) -> float:
        """Send audio in real time; returns the monotonic time the last frame went out."""
        step = int(sample_rate * FRAME_SECS)
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(samples), step)):
            chunk = samples[offset : offset + step]
            if len(chunk) < step:
                chunk = np.pad(chunk, (0, step - len(chunk)))
            await self.session.receive((sample_rate, chunk.reshape(1, -1)))
            delay = start + (i + 1) * FRAME_SECS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return time.monotonic()

    async def play_silence_until(self, predicate, timeout: float, sample_rate: int = 16000):
        """Keep the mic open (silence) until ``predicate()`` holds, as a browser would."""
        step = int(sample_rate * FRAME_SECS)
        zeros = np.zeros((1, step), dtype=np.int16)
        deadline = time.monotonic() + timeout
        next_at = time.monotonic()
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached while listening")
            await self.session.receive((sample_rate, zeros))
            next_at += FRAME_SECS
            await asyncio.sleep(max(0, next_at - time.monotonic()))

    async def wait_for(self, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.02)

    def events(self, kind: str) -> list:
        return [e for e in self.session.events if e.kind == kind]

    async def close(self) -> None:
        await self.session.shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
