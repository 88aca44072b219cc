"""asyncio's event-loop internals we rely on (CPython's ``BaseEventLoop``)."""

from __future__ import annotations

import asyncio
import heapq

from pipeline.compat import Reliance

_RETIRE = (
    "asyncio dropping a cancelled timer's context when it is cancelled (it drops only the callback)"
)

CONTRACT = [
    Reliance(
        "asyncio",
        "asyncio.base_events.BaseEventLoop",
        "_scheduled",
        "a cancelled timer stays in this heap until its due time, with the context it was made "
        "in; a closed connection's context holds fastrtc's data channel and through it the peer "
        "connection and pipeline: the guard drops cancelled timers before each collection",
        _RETIRE,
        on_instance=True,
    ),
    Reliance(
        "asyncio",
        "asyncio.base_events.BaseEventLoop",
        "_timer_cancelled_count",
        "the count of cancelled timers in _scheduled, reset as asyncio's own clean-up does",
        _RETIRE,
        on_instance=True,
    ),
]


def drop_cancelled_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Remove the cancelled timers from ``loop``'s heap; returns how many.

    asyncio does the same itself, but only once cancelled timers are over half
    of at least 100. A loop of another kind (uvloop) is left alone.
    """
    scheduled = getattr(loop, "_scheduled", None)
    if not isinstance(scheduled, list):
        return 0
    live = [timer for timer in scheduled if not timer.cancelled()]
    dropped = len(scheduled) - len(live)
    if dropped:
        heapq.heapify(live)
        loop._scheduled = live  # type: ignore[attr-defined]
        loop._timer_cancelled_count = 0  # type: ignore[attr-defined]
    return dropped
