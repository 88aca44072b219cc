"""The embedded offline models: no key, no network.

Available wherever their native runtimes pass the start-up probe
(:mod:`pipeline.probe`); a stage that failed it refuses to build, with the reason.
"""

from __future__ import annotations

from pipeline.local_services import (
    LocalLlamaLLMService,
    LocalPiperTTSService,
    LocalWhisperSTTService,
)
from pipeline.models import LLM_LABEL, PIPER_LABEL, WHISPER_LABEL
from pipeline.providers import Catalog, Provider


def _stt(choice, _key, config, models):
    models.require("stt")
    return LocalWhisperSTTService(models=models, interim_every_secs=config.interim_every_secs)


def _llm(choice, _key, config, models):
    models.require("llm")
    return LocalLlamaLLMService(
        models=models, system_instruction=config.system_prompt, max_tokens=config.llm_max_tokens
    )


def _tts(choice, _key, config, models):
    models.require("tts")
    return LocalPiperTTSService(models=models)


PROVIDER = Provider(
    id="local",
    label="Local",
    key_env=None,
    catalogs={
        "stt": Catalog((WHISPER_LABEL,)),
        "llm": Catalog((LLM_LABEL,)),
        "tts": Catalog((PIPER_LABEL,), voices=(("Joe (en-US)", "en_US-joe-medium"),)),
    },
    factories={"stt": _stt, "llm": _llm, "tts": _tts},
)
