"""Shared pieces of the provider fakes: latency injection, failure modes, speech-like audio.

The fakes stand in for Groq and ElevenLabs on 127.0.0.1. They speak the
providers' documented wire protocols so the real pipecat service classes can
be driven against them, and they can be told to be slow (latencies drawn from
published figures, for the benchmark) or to fail the way the real APIs fail.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

# z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722


@dataclass(frozen=True)
class Latency:
    """A delay drawn from a log-normal distribution with the given median and p95 (seconds).

    Log-normal because service latencies are right-skewed: most calls near the
    median, a tail of slow ones. ``Latency()`` is no delay at all.
    """

    median: float = 0.0
    p95: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.median <= 0:
            return 0.0
        if self.p95 <= self.median:
            return self.median
        sigma = math.log(self.p95 / self.median) / _Z95
        return self.median * math.exp(rng.gauss(0.0, sigma))


# What a fake can be told to do instead of answering normally.
FAILURE_MODES = (
    "401",  # the key is refused
    "429",  # rate limited
    "500",  # internal server error
    "503",  # overloaded / unavailable
    "hang",  # accept the request, never send a first byte
    "drop",  # start answering, then cut the connection mid-stream
)


@dataclass
class Failure:
    """A failure for the next ``times`` requests to one endpoint (None: until cleared)."""

    mode: str
    times: int | None = 1

    def __post_init__(self):
        if self.mode not in FAILURE_MODES:
            raise ValueError(f"unknown failure mode {self.mode!r}; one of {FAILURE_MODES}")

    def take(self) -> bool:
        """Consume one use; False once used up."""
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


class ProviderFake:
    """What every fake offers its tests: ``async with``, ``fail`` and ``recover``.

    Subclasses name the ``provider`` they stand in for (its id in the provider
    registry) and their ``endpoints``, fill ``_failures = {}`` and ask
    :meth:`_take_failure` when a request (or a websocket connection) arrives.
    """

    provider: str
    endpoints: tuple[str, ...] = ()
    _failures: dict[str, Failure]

    async def start(self):
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def fail(self, endpoint: str, mode: str, times: int | None = 1) -> None:
        """Make the next ``times`` requests (None: all, until :meth:`recover`) to ``endpoint`` fail.

        ``endpoint`` is one of :attr:`endpoints` or "*" (any); ``mode`` one of
        :data:`FAILURE_MODES`. An endpoint's own failure wins over "*".
        """
        if endpoint not in (*self.endpoints, "*"):
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {(*self.endpoints, '*')}")
        self._failures[endpoint] = Failure(mode, times)

    def recover(self) -> None:
        """Stop injecting failures."""
        self._failures.clear()

    def _take_failure(self, endpoint: str) -> str | None:
        """The failure mode for this request, if one is pending (consuming one use)."""
        for key in (endpoint, "*"):
            failure = self._failures.get(key)
            if failure is None:
                continue
            if failure.take():
                if failure.times == 0:
                    del self._failures[key]
                return failure.mode
            del self._failures[key]
        return None


def speech_like_pcm(text: str, sample_rate: int, chars_per_sec: float = 15.0) -> np.ndarray:
    """Int16 mono audio as long as ``text`` would take to say: voiced syllable-like bursts.

    Not speech, but loud where speech would be and as long, so playback,
    pacing, barge-in and highlight timing behave as with a real voice.
    """
    duration = max(0.2, len(text) / chars_per_sec)
    t = np.arange(int(duration * sample_rate)) / sample_rate
    pitch = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    carrier = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate)
    syllables = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t - np.pi / 2))
    return (carrier * syllables * 9000).astype(np.int16)
