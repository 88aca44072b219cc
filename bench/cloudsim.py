"""The ``cloud-sim`` profile: Groq and ElevenLabs fakes on 127.0.0.1 with published latencies.

The sessions run the real pipecat Groq and ElevenLabs service classes against
:mod:`testkit.fakes`. The fakes sleep for latencies drawn from the providers'
published figures and record each draw, so a turn's *pipeline overhead* can be
worked out exactly: voice-to-voice minus the endpointing wait minus the
latencies injected for that turn.

Three things make the records attributable to a session and a turn when
twenty sessions share one fake:

- every utterance carries an inaudible watermark (a +-1 LSB pattern keyed by
  session and turn), so the transcription fake recognises *which* utterance it
  was sent, and answers with its words (transcripts look real);
- each session's system prompt names the session, so a chat request is known;
- sessions open their ElevenLabs websocket one at a time, so a TTS connection
  belongs to the session that was starting when it opened.

The fakes run on an event loop of their own, in a thread: their own work
(JSON, base64, TLS) must not queue on the loop whose delays we measure.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from testkit.env import fake_provider_env
from testkit.fakes.common import Latency
from testkit.fakes.elevenlabs import FakeElevenLabs
from testkit.fakes.groq import FakeGroq
from testkit.loop import ThreadLoop

GROQ_KEY = "gsk_bench_fake_key_0123456789abcdef"
ELEVEN_KEY = "el_bench_fake_key_0123456789abcdef"
STT = ("groq", "whisper-large-v3-turbo")
LLM = ("groq", "llama-3.1-8b-instant")
TTS = ("elevenlabs", "eleven_flash_v2_5")
# The cloud-sim-streaming profile's speech-to-text: Scribe realtime streams partial
# transcripts while the user speaks, and commits when our VAD says they stopped.
STREAMING_STT = ("elevenlabs", "scribe_v2_realtime")


# Provider latencies from their published figures (median, p95 in seconds).
# Groq Whisper large-v3-turbo: ~300 ms to a final transcript of a short utterance.
STT_LATENCY = Latency(0.30, 0.36)
# Groq llama-3.1-8b-instant: time to first token median 290 ms, p95 360 ms; ~250 tokens/s.
LLM_TTFT = Latency(0.29, 0.36)
LLM_TOKEN_INTERVAL = 0.004
# ElevenLabs Flash v2.5 over the websocket: first audio median 170 ms, p95 190 ms.
TTS_FIRST_AUDIO = Latency(0.17, 0.19)
# ElevenLabs Scribe v2 realtime: ~150 ms published; the committed transcript of
# an utterance whose partial is already there, after the commit.
STREAMING_STT_FINAL = Latency(0.15, 0.20)


def published_latencies() -> dict:
    """The injected latency settings, for the result file."""
    return {
        "stt": {"median": STT_LATENCY.median, "p95": STT_LATENCY.p95},
        "llm_ttft": {"median": LLM_TTFT.median, "p95": LLM_TTFT.p95},
        "llm_token_interval": LLM_TOKEN_INTERVAL,
        "tts_first_audio": {"median": TTS_FIRST_AUDIO.median, "p95": TTS_FIRST_AUDIO.p95},
        "streaming_stt_final": {
            "median": STREAMING_STT_FINAL.median,
            "p95": STREAMING_STT_FINAL.p95,
        },
    }


# -- what the bench says, recognisable in what the fakes receive ---------------------------

FRAME_SAMPLES = 320  # the driver's 20 ms frames at 16 kHz


@dataclass
class Utterance:
    key: str  # "s<session>t<turn>" (+ "i" for an interruption)
    text: str
    frames: int  # 20 ms frames in the audio
    voiced: tuple[int, int]  # first and last frame with speech in them


class Utterances:
    """The bench's spoken lines, watermarked per session and turn, and their recognition.

    The pipeline passes the driver's 20 ms frames through unchanged, and the
    segmented STT uploads a run of them: so every frame of every utterance is
    indexed by its bytes, and an upload is recognised frame by frame (a dict
    look-up each; no search, which would hold the GIL for a measurable time).
    """

    def __init__(self) -> None:
        self._frames: dict[bytes, tuple[Utterance, int]] = {}
        self._lock = threading.Lock()  # the fakes' thread reads while sessions register

    def say(self, text: str, key: str, samples: np.ndarray) -> np.ndarray:
        """``samples`` with an inaudible +-1 LSB watermark for ``key``, registered."""
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        marked = samples.astype(np.int32) + rng.integers(-1, 2, len(samples))
        marked = np.clip(marked, -32768, 32767).astype(np.int16)
        self.register(key, text, marked)
        return marked

    def register(self, key: str, text: str, samples: np.ndarray) -> None:
        """Recognise ``samples`` (16 kHz int16, sent unchanged from its first sample) as ``text``.

        Distinct recordings need no watermark: the evals register each
        scenario's recording as it is on disk.
        """
        padded = np.pad(samples, (0, -len(samples) % FRAME_SAMPLES))  # as the driver pads
        frames = padded.reshape(-1, FRAME_SAMPLES)
        loud = np.flatnonzero(np.abs(frames).max(axis=1) > 300)
        voiced = (int(loud[0]), int(loud[-1])) if len(loud) else (0, len(frames) - 1)
        utterance = Utterance(key, text, len(frames), voiced)
        with self._lock:
            for i, frame in enumerate(frames):
                # Digital silence is in every recording (and in every gap a client
                # fills): it says nothing about which utterance an upload holds.
                if frame.any():
                    self._frames[frame.tobytes()] = (utterance, i)

    def recognise(self, audio: bytes) -> tuple[Utterance, int, int] | None:
        """The utterance in ``audio`` (a WAV or raw PCM upload) and the frames of it present."""
        hits: dict[str, list[int]] = {}
        found: dict[str, Utterance] = {}
        step = FRAME_SAMPLES * 2
        for offset in (44, 0):  # after a canonical WAV header, or raw PCM
            for start in range(offset, len(audio) - step + 1, step):
                hit = self._frames.get(audio[start : start + step])
                if hit is not None:
                    found[hit[0].key] = hit[0]
                    hits.setdefault(hit[0].key, []).append(hit[1])
            if hits:
                break
        if not hits:
            return None
        key = max(hits, key=lambda k: len(hits[k]))
        return found[key], min(hits[key]), max(hits[key])

    def key_of(self, audio: bytes) -> str | None:
        hit = self.recognise(audio)
        return hit[0].key if hit else None

    def transcript(self, audio: bytes) -> str:
        """The words of the utterance in ``audio``; for a part of it, the words of that part."""
        hit = self.recognise(audio)
        if hit is None:
            return ""
        utterance, first, last = hit
        words = utterance.text.split()
        start_voice, end_voice = utterance.voiced
        if last < start_voice or first > end_voice:
            return ""  # only the silence before or after the words
        if first <= start_voice and last >= end_voice:
            return utterance.text
        span = end_voice - start_voice + 1
        start = min(len(words) - 1, max(0, math.floor((first - start_voice) / span * len(words))))
        end = max(start + 1, math.ceil((last - start_voice + 1) / span * len(words)))
        return " ".join(words[start:end])


# -- what the LLM fake answers -------------------------------------------------------------

ANSWERS = {
    "capital of france": "The capital of France is Paris.",
    "legs does a spider": "A spider has eight legs.",
    "name for a black cat": "How about Shadow? Midnight would suit a black cat too.",
    "colour is the sky": "On a clear day the sky is blue.",
    "leaves fall": "Trees drop their leaves in autumn to save water and energy over winter.",
    "two plus three": "Two plus three is five.",
    "fact about the ocean": "The ocean holds about ninety seven percent of the water on Earth.",
    "cook for dinner": "A quick vegetable stir fry with rice would be a good choice tonight.",
    "stop": "Of course, I will stop there.",
    "knight and a dragon": (
        "Once upon a time a brave knight named Elric rode out from a small village at dawn. "
        "A dragon had been stealing sheep from the hills, and the people were frightened. "
        "Elric climbed the mountain for three days, through snow and wind and falling rocks. "
        "At the top he found the dragon sleeping beside a pile of gold and old bones. "
        "Instead of fighting, he sat down and waited until the great beast opened its eyes. "
        "They talked until sunset, and the dragon promised to hunt deer instead of sheep."
    ),
}


def answer(messages: list[dict]) -> str:
    """A plausible answer to the last user message (the fake LLM's reply function)."""
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    said = last.lower() if isinstance(last, str) else ""
    for cue, reply in ANSWERS.items():
        if cue in said:
            return reply
    return "That is a good question. Here is a short answer for you."


def system_prompt_for(session: int) -> str:
    """The default prompt naming the session: how a chat request is traced to its session."""
    from pipeline.server_settings import DEFAULT_SYSTEM_PROMPT

    return f"{DEFAULT_SYSTEM_PROMPT} (Benchmark session {session}.)"


_SESSION_TAG = re.compile(r"\(Benchmark session (\d+)\.\)")


def session_of_chat(messages: list[dict]) -> int | None:
    for message in messages:
        if message.get("role") == "system":
            found = _SESSION_TAG.search(str(message.get("content")))
            if found:
                return int(found.group(1))
    return None


# -- the fakes, on their own loop ----------------------------------------------------------


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block, as it was afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class CloudFakes:
    """FakeGroq and FakeElevenLabs serving from a thread, with the published latencies.

    Entered, it points this process's Groq and ElevenLabs clients at the fakes
    (sessions built here get the keys in :meth:`session_config`);
    :meth:`app_environment` does the same for ``python app.py``. Without
    ``utterances`` the fakes transcribe every upload as their default question
    (audio that went through Opus carries no watermark). With ``streaming``
    the sessions transcribe with Scribe realtime (``STREAMING_STT``) instead of
    Groq's segmented Whisper. ``reply`` is what the LLM fake answers.
    """

    def __init__(
        self,
        utterances: Utterances | None = None,
        streaming: bool = False,
        reply: Callable[[list[dict]], str] = answer,
    ):
        self.utterances = utterances
        self.streaming = streaming
        transcript = utterances.transcript if utterances else None
        self.groq = FakeGroq(
            api_key=GROQ_KEY,
            stt_latency=STT_LATENCY,
            llm_ttft=LLM_TTFT,
            llm_token_interval=LLM_TOKEN_INTERVAL,
            transcript=transcript,
            reply=reply,
        )
        self.elevenlabs = FakeElevenLabs(
            api_key=ELEVEN_KEY,
            tts_first_audio=TTS_FIRST_AUDIO,
            stt_final=STREAMING_STT_FINAL,
            transcript=transcript,
        )
        self._stack = contextlib.AsyncExitStack()

    def app_environment(self) -> dict[str, str]:
        """What ``python app.py`` needs to use the fakes as its server's own providers."""
        return fake_provider_env(self.groq, self.elevenlabs)

    async def __aenter__(self) -> CloudFakes:
        async with contextlib.AsyncExitStack() as stack:
            loop = stack.enter_context(ThreadLoop("cloud-fakes"))
            await stack.enter_async_context(loop.serving_async(self.groq))
            await stack.enter_async_context(loop.serving_async(self.elevenlabs))
            env = fake_provider_env(self.groq, self.elevenlabs, keys=False)
            stack.enter_context(_environment(env))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    def tts_connections_between(self, start: float, end: float) -> set[int]:
        """ElevenLabs websockets (TTS; streaming STT) opened in [start, end] (time.monotonic())."""
        return {
            r["connection"]
            for r in list(self.elevenlabs.requests)
            if r["endpoint"] in ("tts", "stt") and start <= r["time"] <= end and "connection" in r
        }

    def session_config(self, session: int, **knobs):
        from pipeline.config import SessionConfig
        from pipeline.providers.base import ProviderKeys
        from pipeline.providers.registry import choice_for

        stt = STREAMING_STT if self.streaming else STT
        return SessionConfig(
            keys=ProviderKeys({"groq": GROQ_KEY, "elevenlabs": ELEVEN_KEY}),
            stt=choice_for(stt[0], "stt", stt[1]),
            llm=choice_for(LLM[0], "llm", LLM[1]),
            tts=choice_for(TTS[0], "tts", TTS[1]),
            system_prompt=system_prompt_for(session),
            **knobs,
        )


# -- which injected latencies belong to which turn -----------------------------------------


@dataclass
class TurnWindow:
    """One turn of one session as the fakes saw it."""

    session: int
    utterance_key: str
    start: float  # time.monotonic(): the question started
    end: float  # the next utterance started (or the session ended)


class InjectedLatencies:
    """Which latencies the fakes injected for which turn (built once, after a run)."""

    def __init__(self, fakes: CloudFakes):
        self._fakes = fakes
        self._stt: dict[str, list] = {}
        for r in list(fakes.groq.requests):
            if r.endpoint == "transcriptions" and r.file and r.injected_delay is not None:
                key = fakes.utterances.key_of(r.file.data)
                self._stt.setdefault(key, []).append(r)
        self._chat = [
            (session_of_chat(r.messages), r)
            for r in list(fakes.groq.requests)
            if r.endpoint == "chat" and r.injected_delay is not None
        ]
        self._tts = list(fakes.elevenlabs.tts_generations)
        self._streaming_stt = list(fakes.elevenlabs.stt_commits)

    def for_turn(self, window: TurnWindow, tts_connections: set[int]) -> dict[str, float | None]:
        """The STT delay, LLM TTFT and TTS first-audio latency injected for one turn.

        STT: the last transcription of the turn's utterance (a question split
        into two VAD segments is answered after the second); streaming, the
        last commit on the session's Scribe websocket in the window. LLM: the
        session's first chat request in the window. TTS: the first generation
        on the session's websocket in the window.
        """
        stt = self._stt.get(window.utterance_key, [])
        chat = [
            r
            for session, r in self._chat
            if session == window.session and window.start <= r.received_at <= window.end
        ]
        tts = [
            g
            for g in self._tts
            if g["connection"] in tts_connections and window.start <= g["at"] <= window.end
        ]
        commits = [
            c
            for c in self._streaming_stt
            if c["connection"] in tts_connections and window.start <= c["at"] <= window.end
        ]
        if commits:
            stt_delay = max(commits, key=lambda c: c["at"])["injected_delay"]
        else:
            stt_delay = max(stt, key=lambda r: r.received_at).injected_delay if stt else None
        return {
            "stt": stt_delay,
            "llm": min(chat, key=lambda r: r.received_at).injected_delay if chat else None,
            "tts": min(tts, key=lambda g: g["at"])["injected_delay"] if tts else None,
        }
