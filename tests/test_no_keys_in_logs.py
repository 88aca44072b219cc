"""No API key, from the environment or typed by a visitor, is written to any log at any level.

Canary keys (random, new for every run, in each provider's own format) go in
once through the environment and once typed over them; every provider and
stage then runs with logging at DEBUG, configured by the app's own
:func:`pipeline.runtime.configure_logging`, and everything the two logging
systems (the standard library's and loguru, which pipecat uses) wrote is
searched for the canaries, whole or any 12 characters of them. Once in this
process through the real pipeline, once in ``python app.py`` driven over
WebRTC as the page drives it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import string
import sys

import aiohttp
import pytest
from loguru import logger

from pipeline.providers.registry import PROVIDERS
from pipeline.runtime import configure_logging
from pipeline.session import VoiceSession
from testkit.app import AppProcess
from testkit.driver import SessionDriver
from testkit.env import fake_provider_env
from testkit.fakes.elevenlabs import FakeElevenLabs
from testkit.fakes.groq import FakeGroq
from testkit.loop import serving_in_thread
from testkit.speech import speech_pcm
from testkit.webrtc_client import WebRTCClient, page_api, question_audio
from tests.test_providers import session_with
from ui.settings import PageSettings, StagePick, catalog, config_from_settings, initial_settings

QUESTION = "What is the weather like in Paris today?"
# Loggers that print HTTP headers or websocket frames at DEBUG.
HEADER_LOGGERS = ("websockets", "httpcore", "httpcore2", "hpack", "h2", "h11")


def groq_canary() -> str:
    """A key shaped like Groq's: ``gsk_`` and 52 letters and digits."""
    return "gsk_" + "".join(random.choices(string.ascii_letters + string.digits, k=52))


def elevenlabs_canary() -> str:
    """A key shaped like ElevenLabs': ``sk_`` and 48 hex digits."""
    return "sk_" + "".join(random.choices("0123456789abcdef", k=48))


def server_keys(keys: dict[str, str]) -> dict[str, str]:
    """``keys`` (by provider id) as the server's own: each in its provider's key variable."""
    return {PROVIDERS[provider].key_env: key for provider, key in keys.items()}


def plain_canary() -> str:
    """A key shaped like nothing in particular: found only because it was registered."""
    return "visitor-typed-" + "".join(random.choices(string.ascii_lowercase, k=24))


def leaked(canary: str, text: str, window: int = 12) -> str | None:
    """Where any ``window`` characters of ``canary``'s random part occur in ``text`` (or None)."""
    tail = canary.split("_", 1)[-1]
    for start in range(len(tail) - window + 1):
        at = text.find(tail[start : start + window])
        if at >= 0:
            return text[max(0, at - 160) : at + 100]
    return None


def assert_not_logged(keys: dict[str, dict[str, str]], text: str) -> None:
    for source, by_provider in keys.items():
        for provider, key in by_provider.items():
            found = leaked(key, text)
            assert found is None, f"the {source} {provider} key was logged: ...{found}..."


@pytest.fixture
def debug_log(monkeypatch):
    """The app's logging at DEBUG as a fresh ``python app.py`` has it, written into a buffer.

    pytest's log handlers are set aside while ``configure_logging`` runs (the
    root logger of a fresh process has none, and ``logging.basicConfig``
    would do nothing beside them), and stderr is the buffer then, so both
    logging systems write there.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_factory = logging.getLogRecordFactory()
    saved_levels = {name: logging.getLogger(name).level for name in HEADER_LOGGERS}
    buffer = io.StringIO()
    real_stderr = sys.stderr
    for handler in saved_handlers:
        root.removeHandler(handler)
    monkeypatch.setenv("VOICE_LAB_LOG_LEVEL", "DEBUG")
    sys.stderr = buffer
    try:
        configure_logging()
    finally:
        sys.stderr = real_stderr
    try:
        yield buffer
    finally:
        monkeypatch.undo()
        configure_logging()  # loguru back on the real stderr, at the suite's level
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.setLogRecordFactory(saved_factory)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------- in this process


def session_for(models, settings: PageSettings) -> VoiceSession:
    return session_with(models, config_from_settings(settings))


def settings_with(stt: str, llm: str, tts: str, typed: dict[str, str]) -> PageSettings:
    """The page's settings: these providers, these typed keys (as the key fields store them)."""
    settings = initial_settings()
    for provider_id, key in typed.items():
        settings = settings.with_key(provider_id, key)
    for stage, provider in (("stt", stt), ("llm", llm), ("tts", tts)):
        settings = settings.with_pick(stage, StagePick(provider))
    return settings


async def ask(d: SessionDriver, timeout: float = 45) -> None:
    """Say the question and listen until the reply has been spoken to the end."""
    await d.play(speech_pcm(QUESTION))
    await d.play_silence_until(lambda: any(e.text for e in d.events("BotTurnText")), timeout)


@pytest.mark.slow
async def test_no_key_reaches_the_debug_log_for_any_provider_or_stage(
    models, debug_log, monkeypatch
):
    # The masking must hold on its own: the header loggers the app keeps at
    # INFO are put back to DEBUG, so the handshakes that carry keys are logged.
    for name in HEADER_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    env_keys = {"groq": groq_canary(), "elevenlabs": elevenlabs_canary()}
    typed_keys = {"groq": groq_canary(), "elevenlabs": elevenlabs_canary()}
    for name, value in server_keys(env_keys).items():
        monkeypatch.setenv(name, value)

    async with FakeGroq() as groq, FakeElevenLabs() as eleven:
        for name, value in fake_provider_env(groq, eleven, keys=False).items():
            monkeypatch.setenv(name, value)
        # Once on the server's keys, once on a visitor's typed over them.
        for typed, used in (({}, env_keys), (typed_keys, typed_keys)):
            groq.api_key, eleven.api_key = used["groq"], used["elevenlabs"]
            # The live model and voice lists, as a typed key fetches them.
            assert (await catalog("groq", "llm", typed)).models[0] in groq.chat_models
            voices = (await catalog("elevenlabs", "tts", typed)).voices
            assert voices[0][1] == eleven.voices[0]["voice_id"]
            # Every stage on every cloud provider offering it: two sessions at once.
            first = session_for(models, settings_with("groq", "groq", "elevenlabs", typed))
            second = session_for(models, settings_with("elevenlabs", "groq", "groq", typed))
            async with SessionDriver(first) as a, SessionDriver(second) as b:
                await asyncio.gather(ask(a), ask(b))
                for d in (a, b):
                    assert not d.events("ErrorReported"), d.events("ErrorReported")
                    assert [e for e in d.events("BotTurnText") if e.text]
        for endpoint in ("transcriptions", "chat", "speech", "models"):
            assert len(groq.requests_to(endpoint)) >= 2, endpoint
        assert len(eleven.stt_commits) >= 2 and len(eleven.tts_generations) >= 2

    written = debug_log.getvalue()
    assert_not_logged({"environment": env_keys, "typed": typed_keys}, written)
    # The log is the real thing: both logging systems wrote at DEBUG, and the
    # lines that carried the keys (every ElevenLabs websocket handshake) are there.
    assert "Connecting to ElevenLabs Realtime STT" in written  # pipecat, through loguru
    assert "> GET /v1/speech-to-text/realtime" in written  # websockets, through logging
    assert "/multi-stream-input" in written
    assert written.count("> xi-api-key: ***") >= 4, "the handshakes' key headers were not logged"
    assert "HTTP Response: POST" in written and "/openai/v1/audio/speech" in written  # Groq SDKs


def test_debug_logging_keeps_the_header_loggers_at_info(debug_log):
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
    for name in ("websockets.client", "websockets.server", "httpcore.http11", "hpack.hpack"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.INFO, name
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG)


def test_a_registered_key_is_masked_in_every_form_and_every_sink(debug_log):
    from pipeline.providers.base import ProviderKeys

    typed = plain_canary()
    ProviderKeys({"groq": typed})  # as the settings do with what a visitor typed
    # A library's logger with a handler of its own, added after start-up
    # (uvicorn's are so): it never reaches the app's masked stream.
    own = io.StringIO()
    library = logging.getLogger("some.library")
    library.addHandler(logging.StreamHandler(own))
    library.propagate = False
    later_sink: list[str] = []
    sink = logger.add(later_sink.append, level="DEBUG", format="{message}")

    class Secretive:
        def __str__(self) -> str:
            return f"<Client key={typed}>"

    try:
        log = logging.getLogger("voice_lab.test")
        log.debug("typed %s", typed)  # formatted lazily, from args
        log.debug("headers %s", {"xi-api-key": typed})
        log.debug("client %s", Secretive())
        log.debug("cut short: %s...", typed[:20])
        library.warning("%s refused", typed)
        try:
            raise RuntimeError(f"401 for {typed}")
        except RuntimeError:
            log.exception("the request failed")
            logger.exception("the request failed")
        logger.debug(f"typed {typed} into the page")
        logger.debug("formatted by loguru: {}", typed)
    finally:
        logger.remove(sink)
        library.handlers.clear()
        library.propagate = True

    written = debug_log.getvalue()
    everything = "\n".join([written, own.getvalue(), *later_sink])
    assert_not_logged({"typed": {"groq": typed}}, everything)
    assert "typed ***" in written and "headers {'xi-api-key': '***'}" in written
    assert "<Client key=***>" in written and "cut short: ***..." in written
    assert "*** refused" in own.getvalue()
    assert written.count("RuntimeError: 401 for ***") == 2  # both tracebacks, masked
    assert "typed *** into the page" in later_sink[-2] and "loguru: ***" in later_sink[-1]


def test_credential_shaped_values_are_masked_without_being_registered():
    from pipeline.redaction import redact

    cases = {
        "> xi-api-key: abc123": "> xi-api-key: ***",
        "> Authorization: Bearer abcdefgh12345678": "> Authorization: Bearer ***",
        "{'Authorization': 'Bearer abcdefgh12345678'}": "{'Authorization': 'Bearer ***'}",
        "[(b'xi-api-key', b'abc123'), (b'x', b'y')]": "[(b'xi-api-key', b'***'), (b'x', b'y')]",
        '{"xi_api_key": "abc123", "text": " "}': '{"xi_api_key": "***", "text": " "}',
        "GET /v1/x?xi_api_key=abc123&model=m HTTP/1.1": "GET /v1/x?xi_api_key=***&model=m HTTP/1.1",
        "AsyncGroq(api_key='abc123')": "AsyncGroq(api_key='***')",
        f"key {groq_canary()} and {elevenlabs_canary()}.": "key *** and ***.",
    }
    for text, masked in cases.items():
        assert redact(text) == masked, text
    # Ordinary words stay.
    prose = "the bearer of a basic question: max_tokens=80, 5 tokens, task_abcdefghijklmnopqr"
    assert redact(prose) == prose


def test_the_registry_of_typed_keys_is_bounded_and_stays_current(monkeypatch):
    from collections import OrderedDict

    from pipeline import redaction

    # A registry of this test's own.
    monkeypatch.setattr(redaction, "_keys", OrderedDict())
    monkeypatch.setattr(redaction, "_compiled", frozenset())
    monkeypatch.setattr(redaction, "_known", redaction._Known())
    monkeypatch.setattr(redaction, "MAX_KNOWN_KEYS", 50)
    monkeypatch.setattr(redaction, "MAX_PENDING_KEYS", 10**6)  # compiled below, not on a thread
    keys = [plain_canary() for _ in range(60)]
    redaction.remember(*keys[:30])
    redaction.compile_pattern()
    redaction.remember(*keys[30:])  # 10 compiled keys forgotten, 30 pending

    pending = redaction._known.pending
    assert len(redaction._keys) == 50 and sum(map(len, pending.values())) == 30
    for state_ in ("pending", "compiled"):
        for key in keys[10:]:
            assert redaction.redact(f"[{key}]") == "[***]", (state_, key)
        redaction.compile_pattern()
    assert len(redaction._compiled) == 50 and not redaction._known.pending
    assert redaction.redact("a short key") == "a short key"


# --------------------------------------------------------------------------- python app.py


async def page_event(http, base_url: str, session_hash: str, elem_id: str, event: str, value):
    """What the page sends when a settings field fires ``event``; waits until it is handled."""
    async with http.get(f"{base_url}/config") as r:
        config = await r.json()
    component = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == elem_id)
    fn_index = next(
        d["id"] for d in config["dependencies"] if [component, event] in map(list, d["targets"])
    )
    body = {
        "data": [None, value],  # the settings state is filled in server-side
        "event_data": None,
        "fn_index": fn_index,
        "trigger_id": component,
        "session_hash": session_hash,
    }
    async with http.post(f"{base_url}/gradio_api/queue/join", json=body) as r:
        event_id = (await r.json())["event_id"]
    async with http.get(f"{base_url}/gradio_api/queue/data?session_hash={session_hash}") as r:
        async for line in r.content:
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message["msg"] == "process_completed":
                    assert message["success"], message
                    return


@pytest.mark.slow
async def test_no_key_reaches_the_running_apps_debug_log(tmp_path):
    env_keys = {"groq": groq_canary(), "elevenlabs": elevenlabs_canary()}
    typed_keys = {"groq": groq_canary(), "elevenlabs": elevenlabs_canary()}
    groq = FakeGroq(api_key=typed_keys["groq"])
    eleven = FakeElevenLabs(api_key=typed_keys["elevenlabs"])
    audio = question_audio(QUESTION)
    with serving_in_thread(groq), serving_in_thread(eleven):
        env = {
            "VOICE_LAB_LOG_LEVEL": "DEBUG",
            **server_keys(env_keys),
            **fake_provider_env(groq, eleven, keys=False),
        }
        async with (
            AppProcess(tmp_path / "app.log", max_sessions=2, extra_env=env) as app,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
        ):
            client = WebRTCClient(http, app.url, await page_api(http, app.url), "visitor")
            try:
                # On the page, before pressing Record: both keys typed over
                # the server's, speech-to-text switched to ElevenLabs (the
                # LLM stays on Groq, the voice on ElevenLabs).
                for provider, key in typed_keys.items():
                    await page_event(
                        http, app.url, client.session_hash, f"{provider}-key", "blur", key
                    )
                await page_event(
                    http, app.url, client.session_hash, "stt-provider", "input", "elevenlabs"
                )
                await client.connect()
                await client.wait_until_live(60)
                await client.pause(0.5)
                turn = await client.turn(QUESTION, audio)
            finally:
                await client.close()

    assert turn["voice_to_voice"] is not None, app.log_tail()
    # Answered on the typed keys (the fakes take no other), by every stage's cloud provider.
    assert groq.requests_to("chat") and groq.requests_to("models")
    assert eleven.stt_commits and eleven.tts_generations
    written = app.log_path.read_text()
    assert_not_logged({"environment": env_keys, "typed": typed_keys}, written)
    assert written.count(" DEBUG ") > 50, "the app did not log at DEBUG"
    assert "Connecting to ElevenLabs Realtime STT" in written
