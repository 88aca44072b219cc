"""The whole offline voice loop: Piper-made speech in, the real local models, reply audio out.

Each test drives the same ``VoiceSession`` handler the browser connects to,
in real time, and asserts what a listener would notice.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil
import pytest

from pipeline.session import VoiceSession
from testkit.driver import SessionDriver
from testkit.speech import noise, silence, speech_pcm
from ui import state

pytestmark = pytest.mark.slow


def new_session(models) -> VoiceSession:
    return VoiceSession(reduce=state.reduce, initial_state=state.initial_state, models=models)


async def test_a_spoken_question_gets_a_spoken_answer(models):
    async with SessionDriver(new_session(models)) as d:
        spoken_until = await d.play(speech_pcm("What is the capital of France?"))
        await d.play_silence_until(lambda: d.events("BotTurnText"), timeout=30)

        transcript = " ".join(e.text for e in d.events("UserTranscript")).lower()
        assert "capital" in transcript and "france" in transcript
        reply = d.events("BotTurnText")[0].text
        assert len(reply.split()) >= 2
        assert d.events("BotToken"), "the LLM reply was not streamed"
        audible = d.received.audible_after(spoken_until)
        assert len(audible) * 0.04 > 0.5, "less than half a second of reply audio"
        latency = d.events("LatencyMeasured")
        assert latency and 0.1 < latency[0].seconds < 5
        labels = [label for label, _ in latency[0].contributions]
        assert "transcription" in labels
        final = d.session.snapshot()
        assert [t.role for t in final.turns] == ["user", "bot"]
        assert final.status == "listening"


async def test_speaking_over_the_bot_stops_it_and_keeps_only_what_was_heard(models):
    interruption = speech_pcm("Stop, please wait.")
    async with SessionDriver(new_session(models)) as d:
        await d.play(speech_pcm("Tell me a long story about a brave knight and a dragon."))
        await d.play_silence_until(lambda: d.events("BotStartedSpeaking"), timeout=30)
        await d.play(silence(1.0))
        assert not d.events("BotTurnText"), "the reply finished before we could interrupt it"

        barge_in_at = time.monotonic()
        await d.play(interruption)
        await d.play_silence_until(lambda: len(d.events("BotTurnText")) >= 1, timeout=30)

        cut = d.events("BotTurnText")[0]
        assert cut.interrupted
        # Reply audio stops promptly once the user starts speaking: the last
        # chunk of the first reply is followed by a pause (a later answer to
        # "stop, please wait" may follow it). Typically 0.34-0.36 s here (the
        # 400 ms target); the bound leaves room for a loaded CI machine (0.66 s
        # seen once) while still failing a reply that plays on to its end.
        audible = d.received.audible_after(barge_in_at)
        stopped_at = barge_in_at
        for chunk_at in audible:
            if chunk_at - stopped_at > 0.3 and stopped_at > barge_in_at:
                break
            stopped_at = chunk_at
        heard_user_at = d.events("UserStartedSpeaking")[-1].t - time.time() + time.monotonic()
        assert stopped_at - barge_in_at < 1.0, (
            f"audio went on {stopped_at - barge_in_at:.2f}s after the user spoke "
            f"(VAD start reported {heard_user_at - barge_in_at:.2f}s after)"
        )
        assert d.received.cleared >= 1, "fastrtc's queue was not cleared"
        # The context keeps only what was spoken (whole sentences whose audio
        # played), never the generated remainder.
        generated = "".join(e.text for e in d.events("BotToken"))
        spoken = " ".join(
            m["content"] for m in d.session.generation.context.messages if m["role"] == "assistant"
        )
        assert len(spoken) < len(generated)
        assert cut.text == spoken


async def test_silence_and_background_noise_start_no_turn(models):
    async with SessionDriver(new_session(models)) as d:
        await d.play(silence(2.0))
        await d.play(noise(3.0, level=0.02))
        await d.play(silence(1.0))
        assert not d.events("UserTurnText")
        assert not d.events("BotStartedSpeaking")
        assert not d.events("ErrorReported")
        assert not d.received.audible_after(0)
        assert d.session.snapshot().status == "listening"


MONOLOGUE = [
    "I want to tell you about my week, because it has been a strange one.",
    "On Monday the train was late, so I walked to work along the river.",
    "The water was high after the rain and the ducks were everywhere.",
    "On Tuesday my sister called to say she is moving to Lisbon in the spring.",
    "She has found a small flat near the sea with a balcony full of plants.",
    "On Wednesday I tried to bake bread for the first time and it did not rise.",
    "My neighbour laughed and gave me a jar of his sourdough starter.",
    "On Thursday I fixed the bicycle that has been broken since last summer.",
    "It needed a new chain, two brake pads and a lot of patience.",
    "On Friday I rode it to the market and bought apples, cheese and flowers.",
    "Then I sat in the park and read a book about the history of maps.",
    "Did you know that old sailors drew monsters where the map was empty?",
    "On Saturday it rained all day, so I cleaned the kitchen and listened to music.",
    "In the evening I cooked a big pot of soup with vegetables from the garden.",
    "My friend came over and we played chess until midnight.",
    "She won every game, but she promised to teach me her favourite opening.",
    "The cat slept on the sofa the whole time and ignored us completely.",
    "Today I am tired but happy, and I would like a short summary of my week.",
]
# One word from each sentence (spelt as Whisper tiny.en writes it): the final
# transcript has to hold the whole utterance, beginning, middle and end.
MONOLOGUE_WORDS = [
    "week",
    "monday",
    "river",
    "water",
    "tuesday",
    "balcony",
    "wednesday",
    "sourdough",
    "thursday",
    "chain",
    "friday",
    "park",
    "sailors",
    "saturday",
    "soup",
    "chess",
    "game",
    "sofa",
    "summary",
]


def squeeze_pauses(samples: np.ndarray, max_pause: float = 0.1, level: int = 300) -> np.ndarray:
    """Shorten every quiet stretch to ``max_pause`` s: a speaker who never stops for breath.

    Silero (0.2 s stop time) then hears one utterance, not one per phrase, so
    the speech-to-text holds and transcribes the whole minute at once.
    """
    frame = 16000 // 50
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    quiet = np.sqrt((frames.astype(np.float32) ** 2).mean(axis=1)) < level
    keep = np.ones(len(frames), dtype=bool)
    run = 0
    for i, q in enumerate(quiet):
        run = run + 1 if q else 0
        keep[i] = run <= max_pause * 50
    return frames[keep].reshape(-1)


class PeakRSS:
    """The highest resident set size seen while the block runs (sampled every 20 ms).

    Native inference (Whisper, Smart Turn, llama.cpp, Piper) allocates and
    frees tens of megabytes per call, which RSS read at one instant may or may
    not catch; the peak does not depend on that timing.
    """

    def __init__(self, process: psutil.Process):
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def test_a_sixty_second_monologue_is_transcribed_and_answered(models):
    speech = squeeze_pauses(np.concatenate([speech_pcm(s) for s in MONOLOGUE]))
    assert len(speech) / 16000 > 55
    process = psutil.Process()
    async with SessionDriver(new_session(models)) as d:
        rss_before = process.memory_info().rss
        with PeakRSS(process) as rss:
            await d.play(speech)
            spoken_at = time.time()

            def answered() -> bool:
                return bool(d.events("UserTurnText")) and bool(d.events("BotTurnText"))

            await d.play_silence_until(answered, timeout=60)
            # Inference still running (an interim pass the end of speech made
            # moot, a sentence being synthesised) holds working memory that is
            # about to be freed: measure what stays once the models are idle.
            locks = (models.whisper_lock, models.interim_lock, models.llm_lock, models.tts_lock)
            await d.play_silence_until(lambda: not any(lock.locked() for lock in locks), 30)
            rss_after = process.memory_info().rss

        growth_mb = (rss_after - rss_before) / 2**20
        peak_mb = (rss.peak - rss_before) / 2**20
        print(f"monologue RSS growth {growth_mb:.0f} MB, peak {peak_mb:.0f} MB")

        # One utterance of a minute, not a turn per phrase: the premise of the test.
        assert len(d.events("UserTurnText")) == 1, [e.text for e in d.events("UserTurnText")]
        heard = d.events("UserTurnText")[0].text.lower()
        missing = [w for w in MONOLOGUE_WORDS if w not in heard]
        assert len(missing) <= 2, f"transcript misses {missing}: {heard}"
        assert "summary" in heard and "monday" in heard
        assert d.events("BotTurnText")[-1].text
        assert not [e for e in d.events("ErrorReported") if e.fatal]
        # The speaker saw their words appear while they spoke, to the end.
        live_before_end = [e for e in d.events("UserTranscript") if not e.final and e.t < spoken_at]
        assert live_before_end, "no interim words while the user spoke"
        assert any(w in live_before_end[-1].text.lower() for w in ("chess", "game", "sofa", "cat"))
        assert "monday" in live_before_end[-1].text.lower(), "interim text lost its beginning"
        assert growth_mb < 300, f"RSS grew by {growth_mb:.0f} MB during the monologue"
        assert peak_mb < 300, f"RSS peaked {peak_mb:.0f} MB above its start during the monologue"
