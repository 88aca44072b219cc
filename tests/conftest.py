"""Shared fixtures. Everything here stays on 127.0.0.1 and loads no weights from a hub."""

import os

import pytest

from testkit.env import apply_offline_env, provider_variables

apply_offline_env()
os.environ.setdefault("VOICE_LAB_LOG_LEVEL", "WARNING")

# Only now: gradio, huggingface_hub and onnxruntime read the offline variables on import.
from pipeline.providers.local.models import LocalModels, shared_models  # noqa: E402
from pipeline.runtime import configure_logging  # noqa: E402


@pytest.fixture(scope="session")
def models() -> LocalModels:
    """The process-wide local models, loaded and warmed once for the whole run."""
    configure_logging()
    shared = shared_models()
    shared.warm_up()
    return shared


@pytest.fixture(autouse=True)
def _no_server_keys(monkeypatch):
    """Tests start keyless (every stage local) unless they set a key themselves.

    Every provider's key and base-URL variable, as the registry names them: a
    developer's key for any provider must not switch the tests to it.
    """
    for name in provider_variables():
        monkeypatch.delenv(name, raising=False)
