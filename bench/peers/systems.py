"""The four systems of the peers race, per profile: what each is made of and written from.

Each ``Contender.connect(index)`` makes one connection to its system: a fastrtc
handler and a test of when it can take a turn. Voice Lab's are
``VoiceSession``s as the app makes them; the peers are built in
:mod:`bench.peers.pipecat_bot` and :mod:`bench.peers.fastrtc_loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

VOICE_LAB = "voice-lab"


@dataclass
class Contender:
    """One system in the race: how to make a connection to it, and what it follows."""

    name: str
    follows: str  # the example or documentation it is written from
    connect: Callable[[int], tuple[object, Callable[[], bool]]]  # index -> (handler, ready)
    calls: str = ""  # its STT, LLM and TTS as it makes them


def _voice_lab(name: str, config: Callable, models, speculative: bool) -> Contender:
    from pipeline.session import VoiceSession
    from ui import state

    def connect(index: int):
        session = VoiceSession(
            reduce=state.reduce,
            initial_state=state.initial_state,
            models=models,
            # The other systems' turns leave this one's microphone silent for a while:
            # not a closed tab.
            config_factory=lambda: config(index, speculative=speculative, audio_gone_secs=3600),
        )

        def started() -> bool:
            return session.generation is not None and any(
                e.kind == "SessionStarted" for e in session.events
            )

        return session, started

    follows = f"this repository (VOICE_LAB_SPECULATIVE={int(speculative)})"
    return Contender(name, follows, connect, "Voice Lab's own")


def contenders(profile: str, models, fakes=None) -> list[Contender]:
    """The four systems for ``profile``; cloud-sim ones on ``fakes`` (:class:`CloudFakes`)."""
    from bench.peers import fastrtc_loop
    from bench.peers.pipecat_bot import PipecatBot
    from pipeline.config import SessionConfig

    serial_models = models
    if profile == "local":

        def config(_index, **knobs):
            return SessionConfig(**knobs)

        # Each system gets a llama.cpp server of its own, as it would running alone: the
        # server's one slot keeps the last prompt, so a turn re-reads only what is new. A
        # shared one would hold another system's conversation, and which system found its own
        # prefix there would depend on the order of the turns.
        serial_models = _models_of_its_own(models)
        stock_services = _local_stock_services(_llm_server_of_its_own())
        local = SessionConfig()
        fastrtc_llm = _llm_server_of_its_own()
        loop_calls = lambda: fastrtc_loop.local_calls(  # noqa: E731
            models, fastrtc_llm, max_tokens=local.llm_max_tokens, temperature=0.3
        )
        prompt = local.system_prompt
        calls = "Whisper tiny.en (greedy), SmolLM2 via llama.cpp's OpenAI API (openai SDK), Piper"
    else:
        config = fakes.session_config
        stock_services = _cloud_stock_services(fakes)
        loop_calls = lambda: _cloud_loop_calls(fakes)  # noqa: E731
        prompt = fakes.session_config(0).system_prompt
        calls = "Groq Whisper and chat, not streamed (groq SDK), ElevenLabs HTTP stream"

    def pipecat(_index: int):
        bot = PipecatBot(stock_services)
        return bot, lambda: bot.started

    def fastrtc(_index: int):
        stt, llm, tts = loop_calls()
        return fastrtc_loop.voice_loop(stt, llm, tts, prompt), lambda: True

    return [
        _voice_lab(VOICE_LAB, config, models, speculative=True),
        _voice_lab("voice-lab-serial", config, serial_models, speculative=False),
        Contender("pipecat", PIPECAT_FOLLOWS[profile], pipecat, PIPECAT_CALLS[profile]),
        Contender(
            "fastrtc",
            "fastrtc demo/llm_voice_chat/app.py, Groq Whisper as in demo/talk_to_claude",
            fastrtc,
            calls,
        ),
    ]


PIPECAT_FOLLOWS = {
    "cloud-sim": "pipecat examples/voice/voice-groq.py, with voice-elevenlabs.py's TTS",
    "cloud-sim-streaming": "pipecat examples/voice/voice-elevenlabs.py, with voice-groq.py's LLM",
    "local": "pipecat examples/voice/voice-piper.py, transcription/transcription-whisper.py "
    "and update-settings/llm/llm-ollama.py (a local OpenAI-compatible server)",
}
PIPECAT_CALLS = {
    "cloud-sim": "GroqSTTService, GroqLLMService, ElevenLabsTTSService",
    "cloud-sim-streaming": "ElevenLabsRealtimeSTTService, GroqLLMService, ElevenLabsTTSService",
    "local": "WhisperSTTService (faster-whisper defaults), OpenAILLMService on llama.cpp, "
    "PiperTTSService",
}


def _models_of_its_own(models):
    """Local models of their own (warmed), with the start-up probe's verdicts of ``models``."""
    from pipeline.providers.local.models import LocalModels

    own = LocalModels()
    own.unavailable = dict(models.unavailable)
    own.warm_up()
    return own


def _llm_server_of_its_own():
    """SmolLM2 on a llama.cpp server of its own (loaded as Voice Lab loads its own)."""
    from pipeline.providers.local.models import LocalModels

    return LocalModels().llm


def _local_stock_services(server) -> Callable[[], tuple]:
    """pipecat's Whisper and Piper on the embedded models, its OpenAI service on ``server``."""

    def services():
        from pipecat.services.openai.llm import OpenAILLMService
        from pipecat.services.piper.tts import PiperTTSService
        from pipecat.services.whisper.stt import WhisperSTTService

        from pipeline.config import SessionConfig
        from pipeline.providers.local.models import LLM_LABEL, piper_voice_onnx, whisper_model_dir

        local = SessionConfig()
        stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=str(whisper_model_dir())))
        llm = OpenAILLMService(
            api_key=server.api_key,
            base_url=server.openai_base_url,
            settings=OpenAILLMService.Settings(
                model=LLM_LABEL,
                system_instruction=local.system_prompt,
                max_tokens=local.llm_max_tokens,
                temperature=0.3,
            ),
        )
        voice = piper_voice_onnx()
        tts = PiperTTSService(
            download_dir=voice.parent, settings=PiperTTSService.Settings(voice=voice.stem)
        )
        return stt, llm, tts

    return services


def _cloud_stock_services(fakes) -> Callable[[], tuple]:
    """pipecat's Groq STT and LLM (or ElevenLabs realtime STT) and ElevenLabs TTS, on the fakes."""

    def services():
        from pipecat.services.elevenlabs.stt import ElevenLabsRealtimeSTTService
        from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
        from pipecat.services.groq.llm import GroqLLMService
        from pipecat.services.groq.stt import GroqSTTService

        from bench.cloudsim import ELEVEN_KEY, GROQ_KEY
        from pipeline.providers import elevenlabs, groq

        config = fakes.session_config(0)
        if fakes.streaming:
            stt = ElevenLabsRealtimeSTTService(
                api_key=ELEVEN_KEY, base_url=elevenlabs.websocket_host()
            )
        else:
            stt = GroqSTTService(
                api_key=GROQ_KEY,
                base_url=groq.openai_base_url(),
                settings=GroqSTTService.Settings(model=config.stt.model),
            )
        llm = GroqLLMService(
            api_key=GROQ_KEY,
            base_url=groq.openai_base_url(),
            settings=GroqLLMService.Settings(
                model=config.llm.model, system_instruction=config.system_prompt
            ),
        )
        tts = ElevenLabsTTSService(
            api_key=ELEVEN_KEY,
            url=elevenlabs.websocket_url(),
            settings=ElevenLabsTTSService.Settings(voice=config.tts.voice, model=config.tts.model),
        )
        return stt, llm, tts

    return services


def _cloud_loop_calls(fakes) -> tuple:
    from bench.cloudsim import ELEVEN_KEY, GROQ_KEY, LLM, STT
    from bench.peers import fastrtc_loop
    from pipeline.providers.groq import LLM_MAX_TOKENS

    config = fakes.session_config(0)
    return fastrtc_loop.cloud_calls(
        (fakes.groq.base_url, GROQ_KEY),
        (fakes.elevenlabs.base_url, ELEVEN_KEY),
        stt_model=STT[1],
        llm_model=LLM[1],
        tts_model=config.tts.model,
        voice=config.tts.voice,
        max_tokens=LLM_MAX_TOKENS,
    )
