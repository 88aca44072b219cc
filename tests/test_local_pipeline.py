"""The whole offline voice loop: Piper-made speech in, the real local models, reply audio out.

Each test drives the same ``VoiceSession`` handler the browser connects to,
in real time, and asserts what a listener would notice.
"""

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
            m["content"] for m in d.session.voice.context.messages if m["role"] == "assistant"
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
    "Today I am tired but happy, and I would like a short summary of my week.",
]


async def test_a_sixty_second_monologue_is_transcribed_and_answered(models):
    speech = np.concatenate([np.concatenate([speech_pcm(s), silence(0.1)]) for s in MONOLOGUE])
    assert len(speech) / 16000 > 45
    process = psutil.Process()
    async with SessionDriver(new_session(models)) as d:
        rss_before = process.memory_info().rss
        await d.play(speech)

        def answered_to_the_end() -> bool:
            last_user = [e for e in d.events("UserTurnText") if "summary" in e.text.lower()]
            return bool(last_user) and any(b.t > last_user[-1].t for b in d.events("BotTurnText"))

        await d.play_silence_until(answered_to_the_end, timeout=60)
        heard = " ".join(e.text for e in d.events("UserTurnText")).lower()
        assert "monday" in heard and "summary" in heard
        assert d.events("BotTurnText")[-1].text
        assert not [e for e in d.events("ErrorReported") if e.fatal]
        growth_mb = (process.memory_info().rss - rss_before) / 2**20
        assert growth_mb < 300, f"RSS grew by {growth_mb:.0f} MB during the monologue"
