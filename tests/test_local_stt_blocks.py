"""The local Whisper service holds and transcribes a long utterance in blocks (no model loaded).

A fake model "transcribes" synthetic speech whose words are runs of a constant
sample value separated by short pauses, so a cut inside a word, a block
transcribed twice or a lost block shows up in the text.
"""

import threading

import numpy as np
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from pipeline.providers.local.services import LocalWhisperSTTService, quiet_point

RATE = 16000
FRAME = RATE // 50  # 20 ms frames, as the transport pushes them


def words_in(pcm16: bytes) -> list[str]:
    """The fake recogniser: one word per run of non-zero samples, named by its value."""
    samples = np.frombuffer(pcm16, dtype=np.int16)
    edges = np.flatnonzero(np.diff(samples) != 0) + 1
    runs = np.split(samples, edges)
    return [f"w{int(run[0]) - 1000}" for run in runs if run[0] != 0]


class FakeModels:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls: list[tuple[str, float]] = []

    def _record(self, kind: str, pcm16: bytes) -> str:
        with self.lock:
            self.calls.append((kind, len(pcm16) / (2 * RATE)))
        return " ".join(words_in(pcm16))

    def transcribe(self, pcm16: bytes, sample_rate: int = RATE) -> str:
        return self._record("final", pcm16)

    def interim_idle(self, first: bool = False) -> bool:
        return True

    def transcribe_interim(self, pcm16: bytes, sample_rate: int = RATE, first=False) -> str | None:
        return self._record("interim", pcm16)


def speech(words: int, word_secs: float = 0.75, pause_secs: float = 0.15) -> np.ndarray:
    pieces = []
    for k in range(1, words + 1):
        pieces += [np.full(int(word_secs * RATE), 1000 + k), np.zeros(int(pause_secs * RATE))]
    return np.concatenate(pieces).astype(np.int16)


def utterance(samples: np.ndarray) -> list:
    frames: list = [VADUserStartedSpeakingFrame()]
    for i, offset in enumerate(range(0, len(samples), FRAME)):
        frames.append(InputAudioRawFrame(samples[offset : offset + FRAME].tobytes(), RATE, 1))
        if i % 10 == 9:
            frames.append(SleepFrame(0.002))  # let interim passes run, as real time would
    frames.append(VADUserStoppedSpeakingFrame(stop_secs=0.0))
    return frames


def test_the_quiet_point_is_the_pause():
    pcm = speech(3)[: int(2.5 * RATE)]  # ends inside the third word
    cut = quiet_point(pcm.tobytes(), RATE)
    assert pcm[cut] == 0
    assert words_in(pcm[:cut].tobytes()) == ["w1", "w2"]
    assert words_in(pcm[cut:].tobytes()) == ["w3"]


async def test_a_minute_long_utterance_is_held_in_blocks_and_transcribed_whole():
    models = FakeModels()
    stt = LocalWhisperSTTService(models=models, sample_rate=RATE, block_secs=15.0)
    samples = speech(66)  # 59.4 s without a pause the VAD would end it on
    down, _ = await run_test(stt, frames_to_send=utterance(samples))

    finals = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    expected = " ".join(f"w{k}" for k in range(1, 67))
    assert finals == [expected], "a word was lost, split or repeated between blocks"

    # Whisper never saw more than one block plus the padding: its 30 s window
    # holds it, and a pass costs the same at the end of a minute as at its start.
    final_secs = [secs for kind, secs in models.calls if kind == "final"]
    interim_secs = [secs for kind, secs in models.calls if kind == "interim"]
    assert len(final_secs) >= 4
    assert max(final_secs) <= 15.0 + 0.3
    assert max(interim_secs) <= 15.0
    assert len(interim_secs) > 30

    # The words appeared while they were spoken, the first ones still shown at the end.
    interim = [f.text for f in down if isinstance(f, InterimTranscriptionFrame)]
    assert interim and interim[-1].startswith("w1 w2 w3")
    assert "w60" in interim[-1] or "w61" in interim[-1]


async def test_a_short_utterance_is_one_pass_as_before():
    models = FakeModels()
    stt = LocalWhisperSTTService(models=models, sample_rate=RATE)
    down, _ = await run_test(stt, frames_to_send=utterance(speech(4)))
    assert [f.text for f in down if isinstance(f, TranscriptionFrame)] == ["w1 w2 w3 w4"]
    assert [kind for kind, _ in models.calls].count("final") == 1
