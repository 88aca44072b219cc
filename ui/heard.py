"""Latency as the visitor hears it: what the page measures, checked on arrival, and drawn.

The dashboard's voice-to-voice ends when the server hands the reply's first
audio to WebRTC. What the visitor waits for ends later: Opus, the network,
the browser's jitter buffer and playback all come after it, and the uplink
(the microphone's audio reaching the server) comes before the server's clock
starts. ``assets/heard_latency.js`` measures both ends in the page, on its own
clock, with WebAudio analysers on the outgoing microphone track and the
incoming bot track, and sends each figure back through a hidden component.

That value comes from the visitor's browser, so it is hostile input:
:func:`parse_heard` accepts only a short JSON object naming a known measure
and a finite number of milliseconds in range, and :class:`HeardIntake` allows
each connection a few a second (a turn takes seconds, so a real page sends
far fewer). Only the page that owns the connection reaches its session (see
``ui.layout``).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from pipeline import events as ev
from ui import markup
from ui.state import HEARD_MEASURES, Heard, SessionState, percentile

# Longest JSON text a page sends: {"measure": "barge-in", "ms": 1234.5, "n": 17}.
MAX_RAW_CHARS = 200
# A heard latency beyond this is no reply to the turn (or a page that slept).
MAX_HEARD_MS = 30_000.0
# Measurements per connection: a burst of this many, then one per REFILL_SECS.
BURST = 4
REFILL_SECS = 2.0
# Connections whose allowance is remembered (oldest forgotten first).
KEPT_CONNECTIONS = 1024
# Turns listed in the panel (the figures cover every measured turn).
VISIBLE_ROWS = 8

LABELS = {
    "reply": ("reply", "mic quiet → bot audible", "V2V", "network, buffering and playback"),
    "barge-in": (
        "barge-in",
        "your voice → bot silent",
        "stop",
        "voice detection, network, buffering and playback",
    ),
}


def parse_heard(raw: object, now: float) -> ev.HeardLatency | None:
    """The page's measurement as an event, or None for anything a real page would not send."""
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_RAW_CHARS:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    measure, ms = data.get("measure"), data.get("ms")
    if not isinstance(measure, str) or measure not in HEARD_MEASURES:
        return None
    # bool is an int to Python; NaN and infinities fail the range check.
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    if not (math.isfinite(ms) and 0 < ms <= MAX_HEARD_MS):
        return None
    return ev.HeardLatency(now, measure, float(ms))


class HeardIntake:
    """A token bucket per connection: a flooding page is ignored, never slowed down for others."""

    def __init__(
        self,
        burst: int = BURST,
        refill_secs: float = REFILL_SECS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._burst = burst
        self._refill_secs = refill_secs
        self._now = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, connection: str) -> bool:
        now = self._now()
        tokens, since = self._buckets.pop(connection, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - since) / self._refill_secs)
        allowed = tokens >= 1
        self._buckets[connection] = (tokens - allowed, now)
        while len(self._buckets) > KEPT_CONNECTIONS:
            self._buckets.popitem(last=False)
        return allowed


# -- drawing ------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def _signed_ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:+.0f} ms"


def server_figure(state: SessionState, entry: Heard) -> float | None:
    """The server's own figure for the turn a heard one belongs to (None: none yet)."""
    if entry.measure == "reply":
        found = [t.seconds for t in state.latency if t.turn == entry.turn]
    else:
        found = [b.seconds for b in state.server_barge_ins if b.turn == entry.turn]
    return found[-1] if found else None


def heard_values(state: SessionState, measure: str) -> list[float]:
    return [entry.seconds for entry in state.heard if entry.measure == measure]


def heard_stat_cells(state: SessionState) -> list[tuple[str, str]]:
    """Heard p50 and p95 for the headline stats (empty until the page measured a reply)."""
    values = heard_values(state, "reply")
    if not values:
        return []
    return [("heard p50", _ms(percentile(values, 50))), ("heard p95", _ms(percentile(values, 95)))]


@dataclass(frozen=True)
class HeardRow:
    """One measured turn in the panel's table."""

    turn: int
    name: str
    what: str
    heard: str
    server_name: str
    server: str
    gap: str
    difference: str


@dataclass(frozen=True)
class HeardSummary:
    """One measure's figures over the session, and the median gap to the server's figure."""

    name: str
    what: str
    p50: str
    p95: str
    count: int
    server_name: str
    gap: str
    difference: str  # empty until a heard figure has a server figure to compare with


def _summary(state: SessionState, measure: str) -> HeardSummary | None:
    pairs = [
        (entry.seconds, server)
        for entry in state.heard
        if entry.measure == measure and (server := server_figure(state, entry)) is not None
    ]
    values = heard_values(state, measure)
    if not values:
        return None
    name, what, server_name, gap = LABELS[measure]
    difference = ""
    if pairs:
        difference = _signed_ms(percentile([heard - server for heard, server in pairs], 50))
    return HeardSummary(
        name,
        what,
        _ms(percentile(values, 50)),
        _ms(percentile(values, 95)),
        len(values),
        server_name,
        gap,
        difference,
    )


def _row(state: SessionState, entry: Heard) -> HeardRow:
    server = server_figure(state, entry)
    name, what, server_name, gap = LABELS[entry.measure]
    difference = None if server is None else entry.seconds - server
    return HeardRow(
        entry.turn,
        name,
        what,
        _ms(entry.seconds),
        server_name,
        _ms(server),
        gap,
        _signed_ms(difference),
    )


def render_heard(state: SessionState) -> str:
    """Per turn: heard in the page, the server's figure, and the difference between them."""
    summaries = [_summary(state, measure) for measure in HEARD_MEASURES]
    return markup.render(
        "heard.html",
        rows=[_row(state, entry) for entry in state.heard[-VISIBLE_ROWS:]],
        summaries=[summary for summary in summaries if summary is not None],
    )
