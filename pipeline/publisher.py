"""Session events -> the UI layer's reducer -> coalesced ``AdditionalOutputs`` for fastrtc.

Observers add events one by one (cheap and synchronous); a task folds them
into the view state at most ``interval`` apart, so a burst of tokens costs one
update rather than one per token. Each update carries the previously published
state too, so the renderer can skip what did not change (charts are redrawn
only when a metric arrived). ``reduce`` and ``initial_state`` come from the UI
layer: the pipeline package never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from fastrtc import AdditionalOutputs

from pipeline import events as ev
from pipeline.transport import SessionOutbox

S = TypeVar("S")
# Seconds from each event's creation to its hand-off to fastrtc, kept for the benchmark.
DELAY_SAMPLES = 2000


class StatePublisher(Generic[S]):
    """Folds events into ``state`` and hands the result to the outbox, coalesced."""

    def __init__(
        self,
        reduce: Callable[[S, ev.Event], S],
        initial_state: Callable[[], S],
        outbox: SessionOutbox,
        interval: float,
        clock: Callable[[], float] = time.time,
    ):
        self._reduce = reduce
        self._outbox = outbox
        self._interval = interval
        self._now = clock
        self.state: S = initial_state()
        self._published: S | None = None
        self.ui_delays: deque[float] = deque(maxlen=DELAY_SAMPLES)
        self._pending: list[ev.Event] = []
        self._dirty = asyncio.Event()
        self._task: asyncio.Task | None = None

    def add(self, event: ev.Event) -> None:
        """Queue ``event`` for the next update; never blocks."""
        self._pending.append(event)
        self._dirty.set()

    def publish(self) -> None:
        """Fold what is pending and hand one update (previous state, new state) to the outbox."""
        pending, self._pending = self._pending, []
        self._dirty.clear()
        for event in pending:
            self.state = self._reduce(self.state, event)
        self._outbox.put(AdditionalOutputs(self._published, self.state))
        now = self._now()
        self.ui_delays.extend(now - event.t for event in pending)
        self._published = self.state

    def snapshot(self) -> S:
        """The state the page shows once pending events are published (tests, benchmark)."""
        self.publish()
        return self.state

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="voice-lab-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self.publish()
            await asyncio.sleep(self._interval)
