"""Process start-up: quiet logs, offline guards, warm models, optional loopback-only ICE."""

from __future__ import annotations

import logging
import os
import sys
import time

from pipeline.compat.aiortc import restrict_ice_to_loopback
from pipeline.probe import RuntimeProbe
from pipeline.providers.local.models import shared_models
from pipeline.weights import local_llm

log = logging.getLogger("voice_lab")


# Loggers that print every HTTP header (API keys among them) or every websocket
# frame at DEBUG: ``websockets.client`` writes "> xi-api-key: ..." for each
# ElevenLabs connection. Never below INFO, whatever the app's level.
HEADER_LOGGERS = ("websockets", "httpcore", "httpcore2", "hpack", "h2", "h11")


def configure_logging() -> None:
    """Both logging systems to stderr, API keys masked; INFO unless ``VOICE_LAB_LOG_LEVEL``.

    INFO by default: pipecat's DEBUG logging is per-frame and costs real CPU.
    pipecat logs through loguru, the libraries through the standard library;
    both write through :class:`pipeline.redaction.RedactingStream`, and
    :func:`pipeline.redaction.install` masks every record as it is made (see
    there for why both). The server's keys are remembered here, a visitor's
    as their :class:`ProviderKeys` is made. Calling it again replaces what it
    set up (the tests do).
    """
    from loguru import logger

    from pipeline import redaction
    from pipeline.providers.registry import keys_from_environment

    level = os.environ.get("VOICE_LAB_LOG_LEVEL", "INFO").upper()
    keys_from_environment()  # remembers the server's keys for masking
    redaction.install()
    logger.remove()
    # diagnose=False: no variable values in tracebacks (loguru's advice for production).
    # loguru's stubs want a sink's write() to return None; a text stream's returns a count.
    logger.add(redaction.RedactingStream(sys.stderr), level=level, diagnose=False)  # type: ignore[call-overload]
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "voice_lab", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(redaction.RedactingStream(sys.stderr))
    handler.voice_lab = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    # loguru's TRACE (pipecat's per-frame lines) is DEBUG to the standard library.
    root.setLevel("DEBUG" if level == "TRACE" else level)
    handler.setLevel(root.level)
    for name in HEADER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))


def prepare_runtime(probe: RuntimeProbe | None = None, warm: bool = True) -> float:
    """Everything the server needs before accepting a visitor; returns seconds taken.

    With a ``probe`` (started as early as possible, see :mod:`pipeline.probe`),
    only the local models that passed it are loaded into this process; the
    others are marked unavailable, with the reason, for the page to show.
    """
    start = time.perf_counter()
    configure_logging()
    if os.environ.get("VOICE_LAB_LOOPBACK_ICE") == "1":
        restrict_ice_to_loopback()
    models = shared_models()
    if probe is not None:
        verdicts = probe.wait()
        models.unavailable = {stage: why for stage, why in verdicts.items() if why is not None}
        log.info("local runtimes checked in %.1fs", time.perf_counter() - start)
    llm = local_llm()
    log.info("local LLM: %s (%s)%s", llm.label, llm.source, f": {llm.notice}" if llm.notice else "")
    if warm:
        models.warm_up()
    elapsed = time.perf_counter() - start
    log.info("Voice Lab ready in %.1fs", elapsed)
    return elapsed
