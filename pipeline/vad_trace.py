"""Keep Silero's per-window speech probability for the timeline, at the cost of one append.

pipecat's Silero analyzer computes a confidence for every 32 ms window and
throws it away once it has compared it with the threshold. The timeline draws
it, so :func:`record_vad_confidence` keeps it: each window appends one byte to
a bounded ring, and when the VAD settles back to quiet the speech just heard
(from its first window, at most :data:`MAX_WINDOWS` of them) goes out as one
:class:`~pipeline.events.VADTrace`. It wraps the instance's own methods, so it
works on whichever Silero analyzer the builder picked (a subclass included).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADState

from pipeline import events as ev

# 20 s of speech at 32 ms a window: a long monologue keeps its last 20 s.
MAX_WINDOWS = 625
# The window that left QUIET and the two before it.
PRE_ROLL_WINDOWS = 3


def record_vad_confidence(
    vad: SileroVADAnalyzer, sink: Callable[[ev.Event], None], clock: Callable[[], float] = time.time
) -> SileroVADAnalyzer:
    """Make ``vad`` report each stretch of speech's probabilities to ``sink``; returns ``vad``."""
    levels: deque[int] = deque(maxlen=MAX_WINDOWS)
    confidence = vad.voice_confidence
    analyze = vad.analyze_audio
    previous = VADState.QUIET
    spoke = False  # this stretch reached SPEAKING (a blip that did not is not reported)

    def voice_confidence(buffer) -> float:
        # Runs on the analyzer's thread: one append, nothing else.
        value = confidence(buffer)
        # Silero answers a one-element array; the base class a plain number.
        level = value.item() if hasattr(value, "item") else value
        levels.append(min(255, max(0, int(level * 255))))
        return value

    async def analyze_audio(buffer: bytes) -> VADState:
        nonlocal previous, spoke
        state = await analyze(buffer)
        if state == previous:
            return state
        if previous == VADState.QUIET:
            # A little of the quiet before it shows the probability rising.
            keep = list(levels)[-PRE_ROLL_WINDOWS:]
            levels.clear()
            levels.extend(keep)
            spoke = False
        spoke = spoke or state == VADState.SPEAKING
        if state == VADState.QUIET and spoke:
            step = vad.num_frames_required() / vad.sample_rate
            now = clock()
            hex_levels = "".join(f"{v:02x}" for v in levels)
            sink(ev.VADTrace(now, now - len(levels) * step, step, hex_levels))
        previous = state
        return state

    # Patches of this one analyzer's methods (mypy types a method as read-only).
    vad.voice_confidence = voice_confidence  # type: ignore[method-assign]
    vad.analyze_audio = analyze_audio  # type: ignore[method-assign]
    return vad
