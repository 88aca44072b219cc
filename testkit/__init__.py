"""Shared test and benchmark equipment, imported by ``tests/`` and ``bench/`` (never each other).

- :mod:`testkit.env`: the offline environment, and every provider's key and base-URL variable
  (read from the provider registry) that a test or benchmark process must not inherit;
- :mod:`testkit.loop`: an event loop on a thread of its own, where the provider fakes serve;
- :mod:`testkit.fakes`: Groq and ElevenLabs stand-ins speaking their documented wire formats;
- :mod:`testkit.driver`: a headless client of a session, driven the way fastrtc drives it;
- :mod:`testkit.speech`: test speech made with the local Piper voice;
- :mod:`testkit.app`: ``python app.py`` as a subprocess, for sync and async code;
- :mod:`testkit.webrtc_client`: an aiortc client of the page's protocol, a microphone and an ear;
- :mod:`testkit.attacks`: one address against the running app, and the visitor who must be answered.

The app never imports it: nothing under ``pipeline/`` or ``ui/``, nor ``app.py``.
"""
