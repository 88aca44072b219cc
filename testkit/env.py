"""The environment tests and benchmarks run in: offline, and without the developer's provider keys.

A server key moves a stage's default from the local model to that provider, so a key
in the developer's shell (for any provider, one added later included) would silently
switch the tests and the benchmark to the real service. The variables come from the
provider registry, so a new provider is covered by its own registry entry.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Nothing leaves 127.0.0.1: no Gradio analytics, no Hugging Face hub look-ups (the
# weights come from installed packages), no ONNX Runtime telemetry.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "ORT_DISABLE_TELEMETRY": "1",
}


def apply_offline_env(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set :data:`OFFLINE_ENV` (before gradio, huggingface_hub or onnxruntime are imported)."""
    environ.update(OFFLINE_ENV)


def provider_variables() -> tuple[str, ...]:
    """Every provider's server-key and base-URL variable, as the provider registry names them."""
    from pipeline.providers.registry import PROVIDERS

    return tuple(
        name for p in PROVIDERS.values() for name in (p.key_env, p.base_url_env) if name is not None
    )


def fake_provider_env(*fakes, keys: bool = True) -> dict[str, str]:
    """The variables that send each fake's provider to it: base URL, CA file, and (``keys``) key.

    A fake names the provider it stands in for (``fake.provider``); one serving TLS
    has a ``cert_path`` whose certificate the clients must trust.
    """
    from pipeline.providers.registry import PROVIDERS

    env: dict[str, str] = {}
    for fake in fakes:
        provider = PROVIDERS[fake.provider]
        env[provider.base_url_env] = fake.base_url
        if keys:
            env[provider.key_env] = fake.api_key
        if getattr(fake, "cert_path", None):
            env["SSL_CERT_FILE"] = fake.cert_path
    return env


def clear_provider_variables(environ: MutableMapping[str, str] = os.environ) -> None:
    """Remove every :func:`provider_variables` name: each stage then defaults to local."""
    for name in provider_variables():
        environ.pop(name, None)
