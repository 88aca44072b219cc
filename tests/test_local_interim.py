"""When the local Whisper service asks for interim words (no model loaded: a recording fake).

A pass costs ~0.45 s of CPU, so on a busy machine the first words of a short
question show while it is spoken only if the first pass comes early, at normal
priority, and is not put off because a model was busy a moment before.
"""

import numpy as np
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test

from pipeline.providers.local.services import LocalWhisperSTTService
from pipeline.speculation import UserPausedFrame
from tests.test_local_stt_blocks import FRAME, RATE, FakeModels, speech


class Recorder(FakeModels):
    """Records each pass as (seconds of audio, first pass?); busy the first ``busy`` times asked."""

    def __init__(self, busy: int = 0):
        super().__init__()
        self.passes: list[tuple[float, bool]] = []
        self.busy = busy

    def _taken(self) -> bool:
        self.busy -= 1
        return self.busy >= 0

    def interim_idle(self, first: bool = False) -> bool:
        return not self._taken()

    def transcribe_interim(self, pcm16: bytes, sample_rate: int = RATE, first=False) -> str | None:
        if self._taken():
            return None
        self.passes.append((len(pcm16) / (2 * RATE), first))
        return super().transcribe_interim(pcm16, sample_rate)


def spoken(samples: np.ndarray, pause_after_secs: float | None = None) -> list:
    """The VAD's start, 20 ms frames in real time order, a pause (if any), the VAD's stop."""
    frames: list = [VADUserStartedSpeakingFrame()]
    for offset in range(0, len(samples), FRAME):
        if pause_after_secs is not None and offset == int(pause_after_secs * RATE):
            frames.append(UserPausedFrame())
        frames.append(InputAudioRawFrame(samples[offset : offset + FRAME].tobytes(), RATE, 1))
        frames.append(SleepFrame(0.002))  # the pass a frame starts runs before the next frame
    frames.append(VADUserStoppedSpeakingFrame(stop_secs=0.0))
    return frames


async def test_the_first_words_are_asked_for_early_on_the_first_words_model():
    models = Recorder()
    stt = LocalWhisperSTTService(models=models, sample_rate=RATE)
    down, _ = await run_test(stt, frames_to_send=spoken(speech(2)))  # 1.8 s of speech

    first, *later = models.passes
    assert first[1] and first[0] <= 0.32, "the first pass came late or at the lowest priority"
    assert later and not any(is_first for _, is_first in later)
    assert all(b - a >= 0.6 for (a, _), (b, _) in zip(models.passes, later, strict=False))
    assert [f for f in down if isinstance(f, InterimTranscriptionFrame)]


async def test_a_busy_model_is_asked_again_at_the_next_frame():
    models = Recorder(busy=10)  # asked every 20 ms from 0.3 s on: busy until 0.5 s
    stt = LocalWhisperSTTService(models=models, sample_rate=RATE)
    await run_test(stt, frames_to_send=spoken(speech(2)))
    (secs, first), *_ = models.passes
    assert first and 0.5 <= secs <= 0.54, "the pass waited longer than the model was busy"


async def test_no_pass_starts_once_the_user_paused():
    models = Recorder()
    stt = LocalWhisperSTTService(models=models, sample_rate=RATE)
    await run_test(stt, frames_to_send=spoken(speech(3), pause_after_secs=1.0))
    assert models.passes and max(secs for secs, _ in models.passes) <= 1.0
