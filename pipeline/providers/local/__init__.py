"""The embedded offline models: no key, no network.

- :mod:`.models`: the process-wide models (Whisper, SmolLM2 on llama.cpp,
  Piper), their locks and warm-up;
- :mod:`.services`: the pipecat services that share them between sessions.

Available wherever their native runtimes pass the start-up probe
(:mod:`pipeline.probe`); a stage that failed it refuses to build, with the reason.
The services are imported when a session first builds one: the probe and the
LLM benchmark import :mod:`.models` alone, before (or without) pipecat.

The LLM's GGUF is decided at start-up (:func:`select_llm`, see
:mod:`pipeline.weights`): the embedded SmolLM2 or a model from the hub, and
the LLM's catalog names the one that runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline import weights
from pipeline.providers.base import Capabilities, Catalog, Provider
from pipeline.providers.local.models import PIPER_LABEL, WHISPER_LABEL, shared_models


def _stt(choice, _key, config, models):
    from pipeline.providers.local.services import LocalWhisperSTTService

    models.require("stt")
    return LocalWhisperSTTService(models=models, interim_every_secs=config.interim_every_secs)


def _llm(choice, _key, config, models):
    from pipeline.providers.local.services import LocalLlamaLLMService

    models.require("llm")
    return LocalLlamaLLMService(
        models=models,
        system_instruction=config.system_prompt,
        max_tokens=config.llm_max_tokens,
        label=weights.local_llm().label,
    )


def _tts(choice, _key, config, models):
    from pipeline.providers.local.services import LocalPiperTTSService

    models.require("tts")
    return LocalPiperTTSService(models=models)


def _unavailable(stage):
    return shared_models().unavailable.get(stage)


PROVIDER = Provider(
    id="local",
    label="Local",
    key_env=None,
    catalogs={
        "stt": Catalog((WHISPER_LABEL,)),
        "llm": Catalog((weights.local_llm().label,)),
        "tts": Catalog((PIPER_LABEL,), voices=(("Joe (en-US)", "en_US-joe-medium"),)),
    },
    factories={"stt": _stt, "llm": _llm, "tts": _tts},
    # Whisper is segmented, but re-transcribes the growing utterance for interim
    # words; SmolLM2-135M has no tool calling; Piper speaks whole sentences.
    capabilities={"stt": Capabilities(interim_text=True)},
    offline=True,
    unavailable=_unavailable,
)


def select_llm(environ: Mapping[str, str] | None = None) -> weights.LocalLLM:
    """Decide the local LLM's GGUF (may download, see :mod:`pipeline.weights`) and name it.

    At start-up, before sessions are configured: the LLM stage's catalog then
    lists the model that runs, which is how the page names it.
    """
    selected = weights.select_local_llm(os.environ if environ is None else environ)
    PROVIDER.catalogs["llm"] = Catalog((selected.label,))
    return selected
