"""Providers: a dropdown choice plus a key in, pipecat services out.

- :mod:`.base`: what a provider is made of and declares (stages, catalogs,
  capabilities, default rank, offline); provider modules import only this of
  the package's plumbing;
- :mod:`.registry`: the list of providers and the questions the UI and the
  pipeline ask of it (defaults, the offline fallback, capabilities, keys);
- one module or package per provider, holding all of its stages:
  :mod:`.local` (the embedded models and their pipecat services), :mod:`.groq`,
  :mod:`.elevenlabs`;
- what several providers share: :mod:`.websocket` (a dropped connection told
  as such), :mod:`.errors` (failures in plain words).

Adding a provider (say a voice): one module with its ``PROVIDER`` (catalog,
factory, key and base-URL variables, what its stage can do, where it ranks as
a default) and one entry in :data:`.registry.PROVIDERS`; the settings panel,
the defaults and the test environment find it there. Its tests: a fake of its
wire protocol in ``testkit/fakes/`` for ``tests/test_capabilities.py``, and its
declared capabilities in ``tests/test_registry.py``.

Adding a capability: one field on :class:`.base.Capabilities`, naming its stage,
set by the providers that have it and read through
:func:`.registry.capabilities`; its tests: its column in
``tests/test_registry.py`` and a check of the built services in
``tests/test_capabilities.py``.

This package's ``__init__`` imports nothing, so that the local models
(:mod:`.local.models`) load without pipecat, for the start-up probe.
"""
