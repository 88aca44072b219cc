"""The providers, and the questions the UI and the pipeline ask about them.

Nothing outside the provider modules decides by a provider's name: which
provider a stage defaults to, which one stands in when a stage cannot run,
what a stage's service can do, which keys the server has, all come from what
each :class:`~pipeline.providers.base.Provider` declares. Adding a provider
means one module (or package) and one entry in :data:`PROVIDERS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pipeline.providers import elevenlabs, groq, local
from pipeline.providers.base import STAGES, Capabilities, Provider, ProviderKeys, Stage, StageChoice


def check(providers: Iterable[Provider]) -> None:
    """Refuse a registry without exactly one offline provider offering every stage."""
    offline = [p for p in providers if p.offline]
    if len(offline) != 1 or offline[0].stages != STAGES:
        raise ValueError(f"need one offline provider for every stage, have {offline}")


def _registry(*providers: Provider) -> dict[str, Provider]:
    check(providers)
    return {p.id: p for p in providers}


PROVIDERS: dict[str, Provider] = _registry(local.PROVIDER, groq.PROVIDER, elevenlabs.PROVIDER)


def providers_for(stage: Stage) -> list[Provider]:
    return [p for p in PROVIDERS.values() if stage in p.stages]


def offline_provider() -> Provider:
    """The provider that runs every stage with no key and no network."""
    return next(p for p in PROVIDERS.values() if p.offline)


def default_choice(stage: Stage, keys: ProviderKeys) -> StageChoice:
    """The best-ranked provider for ``stage`` that ``keys`` let run, else the offline one."""
    usable = [
        p
        for p in providers_for(stage)
        if stage in p.default_rank and (not p.needs_key or keys.get(p.id))
    ]
    usable.sort(key=lambda p: p.default_rank[stage])
    return choice_for((usable[0] if usable else offline_provider()).id, stage)


def offline_choice(stage: Stage) -> StageChoice:
    return choice_for(offline_provider().id, stage)


def choice_for(
    provider_id: str, stage: Stage, model: str | None = None, voice: str | None = None
) -> StageChoice:
    """A complete choice for ``provider_id``, defaulting model and voice from its catalog."""
    provider = PROVIDERS[provider_id]
    catalog = provider.catalogs[stage]
    return StageChoice(
        provider_id,
        model or catalog.default_model,
        (voice or catalog.default_voice) if stage == "tts" else None,
        provider_label=provider.label,
    )


def capabilities(stage: Stage, choice: StageChoice) -> Capabilities:
    """What the service ``choice`` builds for ``stage`` can do."""
    return PROVIDERS[choice.provider].capabilities_of(stage)


def keys_from_environment() -> ProviderKeys:
    """The server's own keys (a Space's secrets), shared by visitors who type none."""
    return ProviderKeys(
        {p.id: os.environ.get(p.key_env, "") for p in PROVIDERS.values() if p.key_env}
    )
