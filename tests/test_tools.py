"""Tools through the real pipeline: Piper-made speech in, pipecat's Groq LLM against the fake.

The Groq fake calls a tool when the user's words ask for one (an order number,
"cancel", "time in <city>") and speaks the tool results in its follow-up, as a
model would. What is asserted is what a visitor notices: the status of their
order in the spoken reply, the waiting phrase while a slow tool works, the
apology when one fails, an interruption that never undoes a cancellation, and
the tool's time on the dashboard.
"""

from __future__ import annotations

import json

import pytest

from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.registry import choice_for
from pipeline.session import VoiceSession
from pipeline.tools import catalog
from pipeline.tools.installer import database_of
from testkit.driver import SessionDriver
from testkit.fakes.groq import FakeGroq
from testkit.speech import speech_pcm
from ui import state
from ui.settings import config_from_settings

pytestmark = pytest.mark.slow

GROQ_KEY = "gsk_fake_valid_key_for_tool_tests_0123"
ORDER_QUESTION = "Where is my order 1234?"
CANCEL_REQUEST = "Please cancel my order 4821."
TIME_QUESTION = "What time is it in Tokyo?"


class Transcripts:
    """What the fake Groq Whisper "hears", one utterance after another (the last one repeats)."""

    def __init__(self, *texts: str):
        self.texts = list(texts)

    def __call__(self, _wav: bytes) -> str:
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


@pytest.fixture
async def groq(monkeypatch):
    async with FakeGroq(api_key=GROQ_KEY) as fake:
        monkeypatch.setenv("GROQ_BASE_URL", fake.base_url)
        yield fake


def config(llm: str = "groq", **knobs) -> SessionConfig:
    return SessionConfig(
        keys=ProviderKeys({"groq": GROQ_KEY}),
        stt=choice_for("groq", "stt"),
        llm=choice_for(llm, "llm"),
        tts=choice_for("groq", "tts"),
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


async def say(d: SessionDriver, text: str, timeout: float = 30) -> None:
    """Say ``text`` and listen until a reply with words in it has been spoken to the end."""
    replies = len([e for e in d.events("BotTurnText") if e.text])
    await d.play(speech_pcm(text))
    await d.play_silence_until(
        lambda: len([e for e in d.events("BotTurnText") if e.text]) > replies, timeout
    )


def spoken(d: SessionDriver) -> str:
    return " ".join(e.text for e in d.events("BotTurnText"))


async def test_a_spoken_order_number_is_looked_up_and_its_status_spoken(models, groq):
    groq.transcript = Transcripts(ORDER_QUESTION)
    async with SessionDriver(session_with(models, config())) as d:
        await say(d, "Where is my order one two three four?")
        await d.play_silence_until(lambda: d.events("LatencyMeasured"), 5)

        started, finished = d.events("ToolCallStarted"), d.events("ToolCallFinished")
        assert [e.name for e in started] == ["lookup_order"]
        assert json.loads(started[0].arguments) == {"order_number": "1234"}
        assert finished[0].ok and finished[0].call_id == started[0].call_id
        # The row's status, as a sentence, is what the bot said.
        row = (
            database_of(d.session.voice.context)
            .execute("SELECT item, status FROM orders WHERE number = '1234'")
            .fetchone()
        )
        assert row["item"] in spoken(d) and row["status"] in spoken(d)
        assert "tomorrow afternoon" in spoken(d)
        # The tools were offered, and the follow-up carried the result back.
        chats = groq.requests_to("chat")
        assert {t["function"]["name"] for t in chats[0].json["tools"]} == {
            t.name for t in catalog.TOOLS
        }
        tool_message = next(m for m in chats[-1].messages if m["role"] == "tool")
        assert tool_message["tool_call_id"] == started[0].call_id
        assert row["item"] in tool_message["content"]
        # On the dashboard: the call, its duration, and the turn's tool time.
        shown = d.session.snapshot()
        call = shown.tool_calls[-1]
        assert call.name == "lookup_order" and call.ok and call.seconds is not None
        assert shown.latency[-1].tool_seconds == pytest.approx(call.seconds, abs=1e-6)
        assert not d.events("ErrorReported")
