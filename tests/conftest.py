"""Shared fixtures. Everything here stays on 127.0.0.1 and loads no weights from a hub."""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("VOICE_LAB_LOG_LEVEL", "WARNING")

import pytest

from pipeline.models import LocalModels, shared_models
from pipeline.runtime import configure_logging


@pytest.fixture(scope="session")
def models() -> LocalModels:
    """The process-wide local models, loaded and warmed once for the whole run."""
    configure_logging()
    shared = shared_models()
    shared.warm_up()
    return shared


@pytest.fixture(autouse=True)
def _no_server_keys(monkeypatch):
    """Tests start keyless (every stage local) unless they set a key themselves."""
    for name in ("GROQ_API_KEY", "ELEVENLABS_API_KEY", "GROQ_BASE_URL", "ELEVENLABS_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
