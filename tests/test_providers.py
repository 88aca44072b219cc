"""Cloud providers through the real pipeline, against fakes of their wire protocols.

Each test drives the same ``VoiceSession`` the browser connects to, with
Piper-made speech, and the real pipecat Groq and ElevenLabs service classes
talking to :mod:`testkit.fakes` on 127.0.0.1. What is asserted is what a visitor
would notice: the words on screen, the reply audio, the latency recorded, the
message when a provider fails, and that the next turn works.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from loguru import logger

from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.registry import choice_for
from pipeline.session import VoiceSession
from testkit.driver import SessionDriver
from testkit.fakes.elevenlabs import FakeElevenLabs
from testkit.fakes.groq import DEFAULT_TRANSCRIPT, FakeGroq
from testkit.speech import silence, speech_pcm
from ui import export, state
from ui.settings import StagePick, config_from_settings, initial_settings

pytestmark = pytest.mark.slow

GROQ_KEY = "gsk_fake_valid_key_for_tests_0123456789"
ELEVEN_KEY = "el_fake_valid_key_for_tests_9876543210"
QUESTION = "What is the weather like in Paris today?"
# One sentence longer than Groq's 200-character TTS input limit.
LONG_SENTENCE = (
    "Paris today is mild and calm with a light breeze from the west and a few soft clouds "
    "over the river and the sun will come out in the afternoon so the evening stays dry "
    "and pleasant for a long walk along the water with friends."
)
LONG_REPLY = (
    "Paris is mild today, with a light breeze from the west and a few clouds over the river. "
    "In the afternoon the sun comes out, and the evening stays dry and pleasant for a walk. "
    "Tomorrow looks much the same, so there is no need for an umbrella this week at all."
)


@pytest.fixture
async def groq(monkeypatch):
    async with FakeGroq(api_key=GROQ_KEY) as fake:
        monkeypatch.setenv("GROQ_BASE_URL", fake.base_url)
        yield fake


@pytest.fixture
async def elevenlabs(monkeypatch):
    async with FakeElevenLabs(api_key=ELEVEN_KEY) as fake:
        monkeypatch.setenv("ELEVENLABS_BASE_URL", fake.base_url)
        monkeypatch.setenv("SSL_CERT_FILE", fake.cert_path)
        yield fake


def config(stt=("local",), llm=("local",), tts=("local",), keys=None, **knobs) -> SessionConfig:
    keys = ProviderKeys(keys if keys is not None else {"groq": GROQ_KEY, "elevenlabs": ELEVEN_KEY})
    return SessionConfig(
        keys=keys,
        stt=choice_for(stt[0], "stt", *stt[1:]),
        llm=choice_for(llm[0], "llm", *llm[1:]),
        tts=choice_for(tts[0], "tts", *tts[1:]),
        **knobs,
    )


def session_with(models, cfg: SessionConfig) -> VoiceSession:
    return VoiceSession(
        reduce=state.reduce,
        initial_state=state.initial_state,
        config_factory=lambda: cfg,
        settings_from_inputs=config_from_settings,
        models=models,
    )


async def ask(d: SessionDriver, text: str = QUESTION, timeout: float = 45) -> float:
    """Say ``text`` and listen until the bot's reply is over; returns when speech ended.

    The reply is over when it has been spoken to the end: the local LLM may
    talk for 20 s or more, hence the generous timeout.
    """
    replies = len(d.events("BotTurnText"))

    def answered() -> bool:
        return any(e.text for e in d.events("BotTurnText")[replies:])

    spoken_until = await d.play(speech_pcm(text))
    await d.play_silence_until(answered, timeout)
    return spoken_until


async def ask_expecting_error(d: SessionDriver, text: str = QUESTION, timeout: float = 20):
    """Say ``text`` and listen until an error is shown; returns (error event, user-stop event)."""
    errors = len(d.events("ErrorReported"))
    await d.play(speech_pcm(text))
    await d.play_silence_until(lambda: len(d.events("ErrorReported")) > errors, timeout)
    stopped = [e for e in d.events("UserStoppedSpeaking")][-1]
    return d.events("ErrorReported")[-1], stopped


def turn_labels(d: SessionDriver) -> list[str]:
    return [t.providers.label for t in d.session.snapshot().turns if t.role == "user"]


async def test_groq_stt_and_llm_with_elevenlabs_tts_answer_a_spoken_question(
    models, groq, elevenlabs
):
    cfg = config(stt=("groq",), llm=("groq",), tts=("elevenlabs",))
    async with SessionDriver(session_with(models, cfg)) as d:
        spoken_until = await ask(d)

        assert d.events("UserTurnText")[0].text == DEFAULT_TRANSCRIPT
        reply = "".join(e.text for e in d.events("BotToken"))
        assert "Paris" in reply and len(d.events("BotToken")) > 3, "the reply was not streamed"
        chat = groq.requests_to("chat")[0]
        assert chat.json["stream"] is True
        assert chat.messages[-1]["content"] == DEFAULT_TRANSCRIPT
        # The reply was heard: audio after the question, and the highlight
        # moved word by word (ElevenLabs sends character timings).
        assert len(d.received.audible_after(spoken_until)) * 0.04 > 1.0
        words = d.events("BotWordStarted")
        assert len(words) >= 5 and all(len(w.text.split()) == 1 for w in words)
        assert not d.events("BotSentenceStarted"), "sentence frames carry no timing here"
        # On screen, the word now playing is the one highlighted.
        shown = state.initial_state()
        for event in d.session.events:
            shown = state.reduce(shown, event)
            if event is words[3]:
                assert shown.bot.speaking == words[3].text
                assert shown.bot.spoken.endswith(words[2].text)
        stages = {e.stage for e in d.events("ServiceTTFB")}
        assert stages == {"stt", "llm", "tts"}
        assert d.events("LatencyMeasured")
        label = turn_labels(d)[0]
        assert "Groq whisper-large-v3-turbo" in label and "ElevenLabs eleven_flash_v2_5" in label
        assert not d.events("ErrorReported")


async def test_elevenlabs_realtime_stt_shows_words_while_the_user_speaks(models, groq, elevenlabs):
    groq.reply = lambda _messages: LONG_SENTENCE
    cfg = config(stt=("elevenlabs",), llm=("groq",), tts=("groq",))
    async with SessionDriver(session_with(models, cfg)) as d:
        spoken_until = await ask(d)

        interim = [e for e in d.events("UserTranscript") if not e.final]
        final = [e for e in d.events("UserTranscript") if e.final]
        assert interim and final, "no interim words while speaking"
        assert interim[0].t < final[0].t
        assert d.events("UserTurnText")[0].text.strip() == DEFAULT_TRANSCRIPT
        # Groq TTS: the whole over-long sentence was voiced, in pieces it accepts.
        speech = groq.requests_to("speech")
        assert len(speech) >= 2 and all(r.status == 200 for r in speech)
        assert len(d.received.audible_after(spoken_until)) * 0.04 > 0.8 * len(LONG_SENTENCE) / 15
        assert "ElevenLabs scribe_v2_realtime" in turn_labels(d)[0]
        assert not d.events("ErrorReported")
    # Nothing is left open at the providers once the visitor has gone.
    await d.wait_for(lambda: elevenlabs.open_connections == 0 and groq.open_responses == 0, 3)


async def test_local_whisper_feeds_a_cloud_llm(models, groq, elevenlabs):
    cfg = config(stt=("local",), llm=("groq", "openai/gpt-oss-20b"), tts=("elevenlabs",))
    async with SessionDriver(session_with(models, cfg)) as d:
        await ask(d)
        heard = groq.requests_to("chat")[0]
        # What local Whisper heard goes to Groq (it may hear "pairs" for "Paris" under load).
        transcript = d.events("UserTurnText")[0].text
        assert "weather" in transcript.lower()
        assert transcript in heard.messages[-1]["content"]
        assert heard.json["model"] == "openai/gpt-oss-20b"
        assert d.events("BotWordStarted")


async def test_a_switch_applies_at_the_next_turn_without_reconnecting(models, groq):
    async with SessionDriver(session_with(models, config())) as d:
        await ask(d, "My name is Ada and I like trains.")
        assert not groq.requests

        # As the page does it: Gradio's worker thread hands over the settings.
        settings = (
            initial_settings()
            .with_pick("llm", StagePick("groq", "llama-3.3-70b-versatile"))
            .with_key("groq", GROQ_KEY)
        )
        await asyncio.to_thread(d.session.set_args, ["webrtc-id", settings])
        await d.play_silence_until(lambda: len(d.events("ProvidersChanged")) == 2, 10)
        await ask(d, "What is my name?")

        chat = groq.requests_to("chat")
        assert len(chat) == 1
        said = json.dumps(chat[0].messages)
        # What Whisper heard ("Ada", or "Adi" on a loaded machine) is what must carry over.
        first_turn = d.events("UserTurnText")[0].text
        assert "trains" in first_turn and json.dumps(first_turn) in said, (
            "the conversation context was lost in the switch"
        )
        assert chat[0].json["model"] == "llama-3.3-70b-versatile"
        labels = turn_labels(d)
        assert "Local SmolLM2" in labels[0] and "Groq llama-3.3-70b-versatile" in labels[1]
        assert len(d.events("SessionStarted")) == 1 and not d.received.closed
        latency = d.session.snapshot().latency
        assert latency[-1].providers.llm == "Groq llama-3.3-70b-versatile"


async def test_a_switch_asked_for_mid_reply_waits_for_the_reply_to_end(models, groq):
    groq.reply = lambda _messages: LONG_REPLY
    async with SessionDriver(session_with(models, config(llm=("groq",)))) as d:
        await d.play(speech_pcm(QUESTION))
        await d.play_silence_until(lambda: d.events("BotStartedSpeaking"), 20)
        # Two changes in quick succession while the bot talks: the last one wins.
        d.session.request_config(config(llm=("groq", "openai/gpt-oss-20b")))
        d.session.request_config(config(llm=("groq", "llama-3.3-70b-versatile")))
        await d.play_silence_until(lambda: len(d.events("ProvidersChanged")) == 2, 60)

        reply = d.events("BotTurnText")[0]
        assert not reply.interrupted and "umbrella" in reply.text, "the switch cut the reply"
        assert d.events("ProvidersChanged")[1].t > d.events("BotStoppedSpeaking")[0].t
        assert d.events("ProvidersChanged")[1].llm == "Groq llama-3.3-70b-versatile"
        await ask(d)
        assert groq.requests_to("chat")[-1].json["model"] == "llama-3.3-70b-versatile"
        assert len(d.events("ProvidersChanged")) == 2


async def test_a_refused_key_is_named_within_3_s_and_another_provider_works_next(models, groq):
    cfg = config(llm=("groq",), keys={"groq": "gsk_wrong_key"})
    async with SessionDriver(session_with(models, cfg)) as d:
        error, stopped = await ask_expecting_error(d)
        assert "Groq refused the API key" in error.message
        assert error.t - stopped.t < 3.0
        assert "gsk_wrong_key" not in error.message
        assert not d.session.finished.is_set()
        assert d.session.snapshot().error == error.message

        d.session.request_config(config(llm=("local",)))
        await d.play_silence_until(lambda: len(d.events("ProvidersChanged")) == 2, 5)
        await ask(d)
        assert [e for e in d.events("BotTurnText") if e.text]
        assert d.session.snapshot().error is None


async def test_a_cloud_provider_picked_without_a_key_starts_on_the_local_model(models):
    cfg = config(llm=("groq",), keys={})
    async with SessionDriver(session_with(models, cfg)) as d:
        assert "No API key for Groq" in d.events("ErrorReported")[0].message
        # Running, on the local LLM (local turns are covered by test_local_pipeline).
        assert d.events("ProvidersChanged")[0].llm.startswith("Local")
        shown = d.session.snapshot()
        assert shown.status == "listening" and "No API key for Groq" in shown.error
        assert not d.session.finished.is_set()


async def test_a_local_llm_that_failed_its_check_is_named_and_a_cloud_llm_still_answers(
    models, groq, monkeypatch
):
    """The start-up probe found the local LLM's runtime crashing on this machine."""
    monkeypatch.setattr(models, "unavailable", {"llm": "its native runtime crashed (SIGSEGV)"})
    refused = session_with(models, config())
    await asyncio.wait_for(refused.start_up(), 10)
    errors = [e for e in refused.events if e.kind == "ErrorReported"]
    assert errors and errors[-1].fatal, refused.events
    assert "local LLM is unavailable" in errors[-1].message
    assert "SIGSEGV" in errors[-1].message and "cloud provider" in errors[-1].message

    async with SessionDriver(session_with(models, config(llm=("groq",)))) as d:
        await ask(d)
        assert "You asked" in d.events("BotTurnText")[-1].text
        assert d.events("ProvidersChanged")[0].llm.startswith("Groq")


@pytest.mark.parametrize(
    ("stage", "provider", "label"),
    [
        ("stt", "groq", "Groq"),
        ("tts", "groq", "Groq"),
        ("stt", "elevenlabs", "ElevenLabs"),
        ("tts", "elevenlabs", "ElevenLabs"),
    ],
)
async def test_every_provider_names_a_refused_key(models, groq, elevenlabs, stage, provider, label):
    keys = {"groq": GROQ_KEY, "elevenlabs": ELEVEN_KEY, provider: "wrong_key_0000"}
    cfg = config(**{stage: (provider,)}, keys=keys)
    async with SessionDriver(session_with(models, cfg)) as d:
        await d.play(speech_pcm(QUESTION))
        await d.play_silence_until(lambda: d.events("ErrorReported"), 20)
        error = d.events("ErrorReported")[0]
        assert f"{label} refused the API key" in error.message, error.message
        # Within 3 s of the first moment it could know: the session start for a
        # websocket provider, the end of the question for a request-per-turn one.
        started = d.events("SessionStarted")[0].t
        asked = d.events("UserStoppedSpeaking")[0].t if d.events("UserStoppedSpeaking") else None
        assert error.t - started < 3.0 or (asked is not None and error.t - asked < 3.0)
        assert not d.session.finished.is_set()


@pytest.mark.parametrize(
    ("mode", "words"), [("429", "rate-limiting"), ("500", "server error"), ("503", "server error")]
)
async def test_rate_limits_and_server_errors_end_the_turn_and_the_next_one_works(
    models, groq, mode, words
):
    cfg = config(stt=("groq",), llm=("groq",))
    async with SessionDriver(session_with(models, cfg)) as d:
        groq.fail("chat", mode, times=None)
        error, _ = await ask_expecting_error(d)
        assert words in error.message and "Groq" in error.message
        await d.play(silence(1.0))
        assert not d.events("BotStartedSpeaking"), "a failed turn should not speak"

        groq.recover()
        await ask(d)
        assert [e for e in d.events("BotTurnText") if e.text]


async def test_an_unreachable_provider_is_reported_and_nothing_is_left_behind(models, monkeypatch):
    monkeypatch.setenv("GROQ_BASE_URL", "http://127.0.0.1:9")  # discard port: refused
    cfg = config(llm=("groq",))
    async with SessionDriver(session_with(models, cfg)) as d:
        error, stopped = await ask_expecting_error(d)
        assert "Could not reach Groq" in error.message
        assert error.t - stopped.t < 5.0
        assert not d.session.finished.is_set()


async def test_a_provider_that_never_answers_is_abandoned_after_10_s(models, groq):
    cfg = config(llm=("groq",))
    async with SessionDriver(session_with(models, cfg)) as d:
        groq.fail("chat", "hang", times=1)
        error, stopped = await ask_expecting_error(d, timeout=30)
        assert "did not answer in time" in error.message
        assert 9.0 < error.t - stopped.t < 14.0
        assert await groq.wait_idle(3.0), "the hung request was never closed"
        await ask(d)  # not deadlocked: the next turn is answered
        assert [e for e in d.events("BotTurnText") if e.text]


@pytest.mark.parametrize("stt", ["groq", "elevenlabs"])
async def test_a_transcriber_that_never_answers_is_reported(models, groq, elevenlabs, stt):
    fake = groq if stt == "groq" else elevenlabs
    fake.fail("transcriptions" if stt == "groq" else "stt", "hang", times=1)
    cfg = config(stt=(stt,), llm=("groq",))
    async with SessionDriver(session_with(models, cfg)) as d:
        error, stopped = await ask_expecting_error(d, timeout=30)
        assert "did not answer in time" in error.message
        assert error.t - stopped.t < 14.0
        assert not d.session.finished.is_set()


async def test_a_tts_websocket_dropped_mid_reply_stops_audio_and_recovers(models, groq, elevenlabs):
    groq.reply = lambda _messages: LONG_REPLY
    cfg = config(stt=("groq",), llm=("groq",), tts=("elevenlabs",))
    # The fake applies a websocket failure to the next connection: the session's own.
    elevenlabs.fail("tts", "drop", times=1)
    async with SessionDriver(session_with(models, cfg)) as d:
        error, _ = await ask_expecting_error(d)
        assert "ElevenLabs" in error.message
        await d.play(silence(1.5))
        still_playing = d.received.audible_after(time.monotonic() - 0.5)
        assert not still_playing, "audio kept playing after the provider dropped"

        await ask(d, timeout=30)
        assert d.events("BotWordStarted")


async def test_ten_barge_ins_in_a_row_stay_within_elevenlabs_context_limit(
    models, groq, elevenlabs
):
    groq.reply = lambda _messages: LONG_REPLY
    cfg = config(stt=("groq",), llm=("groq",), tts=("elevenlabs",), smart_turn=False)
    async with SessionDriver(session_with(models, cfg)) as d:
        for _ in range(10):
            started = len(d.events("BotStartedSpeaking"))
            await d.play(speech_pcm("Tell me about the weather."))
            await d.play_silence_until(
                lambda n=started: len(d.events("BotStartedSpeaking")) > n, 20
            )
            await d.play(speech_pcm("Wait."))
        await ask(d, timeout=30)

        assert len(d.events("Interrupted")) >= 10
        assert elevenlabs.closed_1008 == 0
        assert elevenlabs.max_open_contexts_seen <= elevenlabs.max_contexts
        assert not [e for e in d.events("ErrorReported") if "ElevenLabs" in e.message]


async def test_keys_stay_in_their_own_session_and_out_of_logs_and_exports(
    models, groq, caplog, tmp_path
):
    caplog.set_level(logging.DEBUG)
    loguru_lines: list[str] = []
    sink = logger.add(loguru_lines.append, level="DEBUG")
    visitor_key, other_key = GROQ_KEY, "gsk_someone_elses_wrong_key_555"
    try:
        alice = session_with(models, config(llm=("groq",), keys={"groq": visitor_key}))
        bob = session_with(models, config(llm=("groq",), keys={"groq": other_key}))
        async with SessionDriver(alice) as a, SessionDriver(bob) as b:
            settings = (
                initial_settings().with_key("groq", visitor_key).with_pick("llm", StagePick("groq"))
            )
            await asyncio.to_thread(a.session.set_args, ["alice-connection", settings])
            await asyncio.gather(ask(a), ask_expecting_error(b))
            assert a.events("BotTurnText")[-1].text
            assert "refused" in b.events("ErrorReported")[-1].message
            exports = [export.write_export(list(s.events), tmp_path) for s in (alice, bob)]
    finally:
        logger.remove(sink)

    everything = "\n".join(
        [
            caplog.text,
            *loguru_lines,
            *(path.read_text() for path in exports),
            repr(alice.config),
            str(alice.config),
        ]
    )
    assert visitor_key not in everything and other_key not in everything
    assert len(loguru_lines) > 20, "debug logging was not captured"
    assert config_from_settings(initial_settings()).keys.get("groq") is None


async def test_the_servers_keys_run_out_after_the_budget_and_the_session_goes_local(
    models, groq, monkeypatch
):
    """On a public Space the owner's key serves visitors who type none, for a limited time."""
    monkeypatch.setenv("GROQ_API_KEY", GROQ_KEY)
    monkeypatch.setenv("VOICE_LAB_SERVER_KEY_SECS", "2")
    cfg = config(llm=("groq",), keys={"groq": GROQ_KEY})
    async with SessionDriver(session_with(models, cfg)) as d:
        await ask(d)  # on the server's Groq key while the budget lasts
        assert groq.requests_to("chat")

        def used_up() -> bool:
            return any("used up" in e.message for e in d.events("ErrorReported"))

        await d.play_silence_until(used_up, 10)
        assert "Type your own API key" in d.events("ErrorReported")[-1].message
        assert d.session.snapshot().server_key_remaining == 0
        await d.play_silence_until(lambda: d.events("ProvidersChanged")[-1].llm[:5] == "Local", 10)
        asked_groq = len(groq.requests_to("chat"))
        await ask(d)
        assert len(groq.requests_to("chat")) == asked_groq, "still on the server's key"
        assert d.events("BotTurnText")[-1].text
        # Picking Groq again without a key of one's own stays local, and says why.
        settings = initial_settings().with_pick("llm", StagePick("groq"))
        errors = len(d.events("ErrorReported"))
        await asyncio.to_thread(d.session.set_args, ["connection", settings])
        await d.play_silence_until(lambda: len(d.events("ErrorReported")) > errors, 5)
        assert "used up" in d.events("ErrorReported")[-1].message


async def test_a_visitors_own_key_has_no_time_limit(models, groq, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_the_servers_own_key_000000000")
    monkeypatch.setenv("VOICE_LAB_SERVER_KEY_SECS", "1")
    async with SessionDriver(session_with(models, config(llm=("groq",)))) as d:
        await ask(d)
        await d.play(silence(2.5))  # past the server keys' budget
        assert not d.events("ServerKeyTime") and not d.events("ErrorReported")
        assert d.events("ProvidersChanged")[-1].llm.startswith("Groq")
