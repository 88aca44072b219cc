"""A microphone and an ear for any fastrtc stream handler, used the way fastrtc uses it.

Every system the peers benchmark races is a fastrtc handler: Voice Lab's
``VoiceSession`` is one, fastrtc's ``ReplyOnPause`` is one, and the stock
pipecat bot is wrapped as one (:mod:`bench.peers.pipecat_bot`). fastrtc's
``AudioCallback`` (``fastrtc/tracks.py``) drives them all alike, and so does
:class:`Listener`:

- the handler gets the running loop (``handler._loop``) and fastrtc's
  clear-queue hook (``handler._clear_queue``) before ``start_up()`` runs (a
  sync handler's in a worker thread);
- every 20 ms microphone frame goes to ``receive()`` in real time (a sync
  handler's in a worker thread, as ``anyio.to_thread`` does there);
- ``emit()`` is pulled continuously (a sync handler's through the loop's
  executor, again without a pause when it returns None, as
  ``player_worker_decode`` does) into a playback queue that plays in real
  time; ``clear_queue()`` drops whatever has not played yet.

What the listener hears is that playback (:class:`Playout`): each chunk starts
when it arrives or when the previous one ends. So every figure is taken at the
same point for every system, whatever its chunk sizes or its own pacing: the
first reply audio is the first audible *sample played*, a barge-in stops when
the last audible sample has played.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import numpy as np
from fastrtc import AsyncStreamHandler, CloseStream

from bench.figures import AUDIBLE_THRESHOLD, STOP_GAP_SECS
from pipeline.compat.fastrtc import set_clear_queue, set_handler_loop

FRAME_SECS = 0.02
START_TIMEOUT_SECS = 60.0


class Playout:
    """What the listener hears: emitted audio played in order, in real time.

    ``played`` holds (start, sample rate, samples) per chunk, on
    ``time.monotonic()``; :meth:`clear` cuts the chunk playing now and drops
    the ones after it, as fastrtc's ``clear_queue`` does with its queue.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._now = clock
        self.played: list[tuple[float, int, np.ndarray]] = []
        self.play_until = 0.0
        self.last_audible_end = 0.0
        self.clears = 0

    def add(self, rate: int, samples: np.ndarray) -> None:
        start = max(self._now(), self.play_until)
        self.played.append((start, rate, samples))
        self.play_until = start + len(samples) / rate
        span = _audible_span(start, rate, samples)
        if span is not None:
            self.last_audible_end = span[1]

    def clear(self) -> None:
        now = self._now()
        self.clears += 1
        while self.played and self.played[-1][0] >= now:
            self.played.pop()
        if self.played:
            start, rate, samples = self.played[-1]
            kept = max(0, int((now - start) * rate))
            if kept < len(samples):
                self.played[-1] = (start, rate, samples[:kept])
        self.play_until = min(self.play_until, now)
        spans = self.audible_spans(0.0)
        self.last_audible_end = spans[-1][1] if spans else 0.0

    def audible_spans(self, since: float) -> list[tuple[float, float]]:
        """(first, last) audible sample times of each chunk that plays after ``since``."""
        spans = []
        for start, rate, samples in reversed(self.played):
            if start + len(samples) / rate <= since:
                break
            span = _audible_span(start, rate, samples)
            if span is not None and span[1] > since:
                spans.append(span)
        return spans[::-1]

    def first_audible_after(self, t: float) -> float | None:
        """When the first audible sample after ``t`` plays (None: nothing audible yet)."""
        for start, rate, samples in self.played:
            if start + len(samples) / rate <= t:
                continue
            skip = max(0, int(np.ceil((t - start) * rate - 1e-6)))
            loud = np.flatnonzero(np.abs(samples[skip:]) > AUDIBLE_THRESHOLD)
            if len(loud):
                return start + (skip + int(loud[0])) / rate
        return None

    def stop_after(self, onset: float, gap: float = STOP_GAP_SECS) -> float | None:
        """When the reply playing at ``onset`` fell silent (None: none was playing then).

        The reply is the run of audible chunks around ``onset`` with no more
        than ``gap`` of quiet between them; the answer that may follow an
        interruption comes after a longer silence.
        """
        spans = self.audible_spans(onset - gap)
        if not spans or spans[0][0] > onset + gap:
            return None
        end = spans[0][1]
        for first, last in spans[1:]:
            if first - end > gap:
                break
            end = max(end, last)
        return end

    def quiet_since(self) -> float:
        """Seconds since the last audible sample played (0 while audio is still queued)."""
        now = self._now()
        if now < self.play_until:
            return 0.0
        return now - self.last_audible_end


def _audible_span(start: float, rate: int, samples: np.ndarray) -> tuple[float, float] | None:
    loud = np.flatnonzero(np.abs(samples) > AUDIBLE_THRESHOLD)
    if not len(loud):
        return None
    return start + int(loud[0]) / rate, start + (int(loud[-1]) + 1) / rate


def _audio_of(item) -> tuple[int, np.ndarray] | None:
    """A handler's emitted audio as (rate, int16 mono samples); None for anything else."""
    if not isinstance(item, tuple) or len(item) < 2 or not isinstance(item[1], np.ndarray):
        return None
    rate, samples = item[0], item[1].reshape(-1)
    if samples.dtype != np.int16:  # fastrtc also takes float audio in [-1, 1]
        samples = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    return int(rate), samples


class Listener:
    """Speaks into a fastrtc handler and hears its replies, as fastrtc's audio track does.

    ``ready`` says when the handler can take a turn (a pipeline has started);
    by default at once. Between the handler's turns its emit loop can be
    paused (:meth:`pause`), so that a sync handler's polling does not run
    while another system is being measured.
    """

    def __init__(self, handler, ready: Callable[[], bool] | None = None, rate: int = 16000):
        self.handler = handler
        self.rate = rate
        self.playout = Playout()
        self._ready = ready or (lambda: True)
        self._async = isinstance(handler, AsyncStreamHandler)
        self._active = asyncio.Event()
        self._active.set()
        self._tasks: list[asyncio.Task] = []
        self.closed = False
        # What emit() raised (fastrtc logs these and keeps pulling).
        self.emit_errors: list[str] = []

    async def start(self) -> Listener:
        loop = asyncio.get_running_loop()
        # What fastrtc's connection and AudioCallback install on every handler.
        set_handler_loop(self.handler, loop)
        set_clear_queue(self.handler, self.playout.clear)
        start_up = (
            self.handler.start_up() if self._async else asyncio.to_thread(self.handler.start_up)
        )
        self._tasks.append(asyncio.create_task(start_up, name="listener-start-up"))
        self._tasks.append(asyncio.create_task(self._pull(), name="listener-emit"))
        await self.wait_for(self._ready, START_TIMEOUT_SECS)
        return self

    async def _pull(self) -> None:
        """As fastrtc's ``player_worker_decode``: an error out of ``emit()`` is noted, not fatal."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            await self._active.wait()
            try:
                if self._async:
                    item = await asyncio.wait_for(self.handler.emit(), 60)
                else:
                    item = await loop.run_in_executor(None, self.handler.emit)
            except TimeoutError:
                continue
            except Exception as e:
                self.emit_errors.append(f"{type(e).__name__}: {e}")
                continue
            if isinstance(item, CloseStream):
                self.closed = True
                return
            audio = _audio_of(item)
            if audio is not None:
                self.playout.add(*audio)

    def pause(self) -> None:
        self._active.clear()

    def resume(self) -> None:
        self._active.set()

    async def _receive(self, frame: np.ndarray) -> None:
        if self._async:
            await self.handler.receive((self.rate, frame))
        else:
            await asyncio.to_thread(self.handler.receive, (self.rate, frame))

    async def play(self, samples: np.ndarray) -> float:
        """Say ``samples`` in real time; returns when its voice ended (its last audible sample).

        A 20 ms frame goes out once it has been "spoken", so a sample left the
        speaker's mouth ``(frame end - sample) / rate`` before its frame was sent.
        """
        step = int(self.rate * FRAME_SECS)
        loud = np.flatnonzero(np.abs(samples) > AUDIBLE_THRESHOLD)
        last_voiced = int(loud[-1]) if len(loud) else len(samples) - 1
        start = time.monotonic()
        voice_end = start
        for i, offset in enumerate(range(0, len(samples), step)):
            chunk = samples[offset : offset + step]
            if len(chunk) < step:
                chunk = np.pad(chunk, (0, step - len(chunk)))
            await self._receive(chunk.reshape(1, -1))
            if offset <= last_voiced < offset + step:
                voice_end = time.monotonic() - (offset + step - last_voiced - 1) / self.rate
            delay = start + (i + 1) * FRAME_SECS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return voice_end

    async def play_silence_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Keep the microphone open (silence) until ``predicate()`` holds, as a browser would."""
        zeros = np.zeros((1, int(self.rate * FRAME_SECS)), dtype=np.int16)
        deadline = time.monotonic() + timeout
        next_at = time.monotonic()
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached while listening")
            await self._receive(zeros)
            next_at += FRAME_SECS
            await asyncio.sleep(max(0, next_at - time.monotonic()))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for task in self._tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.closed = True
        self._active.set()
        shutdown = self.handler.shutdown()
        if asyncio.iscoroutine(shutdown):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shutdown, 10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
