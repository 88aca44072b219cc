"""Each provider's declared capabilities hold for the service it builds.

The UI and the pipeline trust the registry's answer to "what can this stage
do?"; here every provider's service for every stage is built as a session
builds it and run through pipecat's ``run_test`` against the fakes (Groq,
ElevenLabs) or the local models, and what it did is compared with what its
provider declares. A provider whose declaration is wrong fails here; one added
to the registry without a fake to run it against fails too.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from pipecat.adapters.schemas.function_schema import FunctionSchema
from pipecat.adapters.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSSpeakFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.tests.utils import SleepFrame, run_test

from pipeline.config import SessionConfig
from pipeline.providers.local.models import LocalModels
from pipeline.providers.registry import (
    PROVIDERS,
    capabilities,
    choice_for,
    keys_from_environment,
    providers_for,
)
from testkit.env import fake_provider_env
from testkit.fakes.elevenlabs import FakeElevenLabs
from testkit.fakes.groq import FakeGroq
from testkit.speech import silence, speech_pcm

pytestmark = pytest.mark.slow

# The fake each keyed provider runs against here.
FAKES = {"groq": FakeGroq, "elevenlabs": FakeElevenLabs}
SENTENCE = "Paris is mild today, with a light breeze from the west."
PARAMS = PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=24000)
WEATHER = FunctionSchema(
    name="get_weather",
    description="The weather in a city now.",
    properties={"city": {"type": "string"}},
    required=["city"],
)


@pytest.fixture
async def fakes(monkeypatch):
    """Every keyed provider pointed at its fake, with the fake's key as the server's."""
    keyed = [p.id for p in PROVIDERS.values() if p.needs_key]
    assert set(keyed) <= set(FAKES), f"no fake to check {set(keyed) - set(FAKES)} against"
    async with contextlib.AsyncExitStack() as stack:
        running = {pid: await stack.enter_async_context(FAKES[pid]()) for pid in keyed}
        for name, value in fake_provider_env(*running.values()).items():
            monkeypatch.setenv(name, value)
        yield running


def build(stage: str, provider: str, models):
    choice = choice_for(provider, stage)
    config = SessionConfig(keys=keys_from_environment(), **{stage: choice})
    service = PROVIDERS[provider].build(stage, choice, config.keys, config, models)
    return service, capabilities(stage, choice)


def ids(stage: str) -> list[str]:
    return [p.id for p in providers_for(stage)]


@pytest.mark.parametrize("provider", ids("tts"))
async def test_word_timing_is_declared_by_the_voices_that_time_each_word(provider, fakes, models):
    tts, can = build("tts", provider, models)
    down, _ = await run_test(tts, frames_to_send=[TTSSpeakFrame(SENTENCE)], pipeline_params=PARAMS)
    spoken = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert " ".join(spoken).split() == SENTENCE.split(), spoken
    word_by_word = all(len(text.split()) == 1 for text in spoken)
    assert word_by_word == can.word_timing, spoken


@pytest.mark.parametrize("provider", ids("tts"))
async def test_streamed_text_is_declared_by_the_voices_that_take_tokens(provider, fakes, models):
    """Such a voice gets each token as it comes, and is told to speak after the first phrase."""
    tts, can = build("tts", provider, models)
    tokens = [("" if i == 0 else " ") + word for i, word in enumerate(SENTENCE.split())]
    frames = [LLMFullResponseStartFrame(), *map(LLMTextFrame, tokens), LLMFullResponseEndFrame()]
    down, _ = await run_test(tts, frames_to_send=[*frames, SleepFrame(1.0)], pipeline_params=PARAMS)
    assert any(f.text.strip() for f in down if isinstance(f, TTSTextFrame))
    if provider != "elevenlabs":
        assert not can.streamed_text  # only ElevenLabs' websocket has a fake that shows it
        return
    sent = [m["message"] for m in fakes["elevenlabs"].messages if m["endpoint"] == "tts"]
    texts = [m.get("text", "") for m in sent]
    assert can.streamed_text == (sum(1 for t in texts if t.strip()) >= len(tokens)), texts
    first_flush = next(i for i, m in enumerate(sent) if m.get("flush"))
    # Generation starts at "Paris is mild today," with the rest still to come.
    assert "".join(texts[:first_flush]).strip() == "Paris is mild today,"


@pytest.mark.parametrize("provider", ids("stt"))
async def test_interim_text_is_declared_by_the_stt_that_sends_it(provider, fakes, models):
    stt, can = build("stt", provider, models)
    audio = np.concatenate([speech_pcm("What is the weather like in Paris today?"), silence(0.3)])
    chunk = 16000 // 50
    frames = [VADUserStartedSpeakingFrame()]
    for start in range(0, len(audio), chunk):
        pcm = audio[start : start + chunk].tobytes()
        frames += [InputAudioRawFrame(pcm, 16000, 1), SleepFrame(0.02)]  # in real time
    frames += [VADUserStoppedSpeakingFrame(), SleepFrame(3.0)]
    down, _ = await run_test(stt, frames_to_send=frames, pipeline_params=PARAMS)
    assert any(isinstance(f, TranscriptionFrame) and f.text for f in down), "no transcript"
    interim = [f.text for f in down if isinstance(f, InterimTranscriptionFrame) and f.text]
    assert bool(interim) == can.interim_text, interim


class _RecordingLlama:
    """Stands in for llama.cpp: records what the local LLM service hands the model."""

    def __init__(self):
        self.calls: list[dict] = []

    def chat(self, messages, **kwargs):
        self.calls.append({"messages": messages, **kwargs})
        kwargs["on_text"]("Sunny.")
        return {"prompt_tokens": 1, "completion_tokens": 1}


@pytest.mark.parametrize("provider", ids("llm"))
async def test_tools_are_declared_by_the_llms_that_are_offered_them(provider, fakes, models):
    """An LLM that calls tools is handed the context's tool definitions with each request."""
    if PROVIDERS[provider].offline:
        recorder = _RecordingLlama()
        models = LocalModels()
        models.__dict__["llm"] = recorder  # the cached model, never loaded here
    llm, can = build("llm", provider, models)
    context = LLMContext(
        [{"role": "user", "content": "What is the weather in Paris?"}],
        tools=ToolsSchema(standard_tools=[WEATHER]),
    )
    await run_test(llm, frames_to_send=[LLMContextFrame(context), SleepFrame(1.0)])
    if PROVIDERS[provider].offline:
        (request,) = recorder.calls
    else:
        (request,) = [r.json for r in fakes[provider].requests_to("chat")]
    offered = [t["function"]["name"] for t in request.get("tools") or ()]
    assert (offered == ["get_weather"]) == can.tools, request
