"""TURN relay credentials: a failed fetch never stops the app; renewed before expiry."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from testkit.app import AppProcess, free_port
from ui.relay import TurnServerCredentials, relay_policy, relay_source

SERVERS = {"iceServers": [{"urls": "turn:127.0.0.1:3478", "username": "u", "credential": "c"}]}


class ScriptedFetch:
    """Fails ``failures`` times, then answers; signals after ``wanted`` successful fetches."""

    def __init__(self, failures: int, wanted: int):
        self.failures = failures
        self.wanted = wanted
        self.calls: list[int] = []
        self.succeeded = 0
        self.done = threading.Event()

    def __call__(self, ttl: int) -> dict:
        self.calls.append(ttl)
        if len(self.calls) <= self.failures:
            raise ConnectionError("the credentials endpoint is down")
        self.succeeded += 1
        if self.succeeded >= self.wanted:
            self.done.set()
        return SERVERS


def test_a_failing_fetch_is_retried_until_the_relay_is_there():
    fetch = ScriptedFetch(failures=3, wanted=1)
    relay = TurnServerCredentials(fetch, ttl=3600, retry_secs=(0.01,))
    assert relay.browser_configuration() == {}
    assert "unavailable" in relay.notice()
    applied: list[dict] = []
    relay.listeners.append(applied.append)
    relay.start()
    try:
        assert fetch.done.wait(10), f"never fetched: {fetch.calls}"
    finally:
        relay.stop()
    assert len(fetch.calls) == 4
    assert relay.browser_configuration() == SERVERS
    assert relay.notice() == "" and relay.error is None
    assert applied == [SERVERS]  # the server side got them too


def test_credentials_are_renewed_before_they_expire():
    fetch = ScriptedFetch(failures=0, wanted=3)
    relay = TurnServerCredentials(fetch, ttl=1, retry_secs=(0.01,))
    relay.start()
    try:
        # Renewed at 3/4 of a 1 s lifetime: three fetches well within 5 s.
        assert fetch.done.wait(5), f"credentials were not renewed: {len(fetch.calls)} fetches"
    finally:
        relay.stop()


def test_an_answer_without_ice_servers_counts_as_a_failure():
    relay = TurnServerCredentials(lambda ttl: {"error": "invalid token"}, retry_secs=(0.01,))
    assert not relay.refresh()
    assert relay.servers is None and "iceServers" in (relay.error or "")


@pytest.mark.slow
def test_the_relay_is_chosen_by_the_servers_settings_your_own_server_first():
    import base64
    import hashlib
    import hmac

    from pipeline.server_settings import ServerSettings, SettingsError

    space = {"SPACE_ID": "voice-lab/test", "HF_TOKEN": "hf_token_for_tests"}
    assert relay_source(ServerSettings.from_environ({})) is None
    assert relay_source(ServerSettings.from_environ(space)) is not None, "Cloudflare's on a Space"
    urls = "turn:127.0.0.1:3478?transport=udp, turn:127.0.0.1:3478?transport=tcp"
    secret = "shared-secret-for-tests"
    own = ServerSettings.from_environ(
        {
            **space,
            "VOICE_LAB_TURN_URLS": urls,
            "VOICE_LAB_TURN_SECRET": secret,
            "VOICE_LAB_TURN_POLICY": "Relay",
        }
    )
    fetch = relay_source(own)
    assert fetch is not None
    (server,) = fetch(600)["iceServers"]
    assert server["urls"] == [u.strip() for u in urls.split(",")]
    signed = hmac.new(secret.encode(), server["username"].encode(), hashlib.sha1).digest()
    assert server["credential"] == base64.b64encode(signed).decode(), "coturn's use-auth-secret"
    assert relay_policy(own) == "relay" and relay_policy(ServerSettings()) is None
    assert secret not in repr(own) and secret not in str(own.model_dump())
    with pytest.raises(SettingsError, match="VOICE_LAB_TURN_POLICY"):
        ServerSettings.from_environ({"VOICE_LAB_TURN_POLICY": "relays"})


def test_the_app_starts_on_a_space_whose_turn_fetch_fails(tmp_path):
    """``SPACE_ID`` and a bogus ``HF_TOKEN``: the fetch fails, yet the page is served and says so.

    The fetch goes through a proxy on a closed local port, so it fails at once
    and nothing leaves 127.0.0.1.
    """
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens
    env = {
        "SPACE_ID": "voice-lab/test",
        "HF_TOKEN": "hf_bogus_token_for_tests",
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "https_proxy": proxy,
        "http_proxy": proxy,
        # Gradio calls its own local URL at launch: the harness sets NO_PROXY for it.
    }
    with AppProcess(tmp_path / "app.log", extra_env=env) as app:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(app.url + "/config", timeout=10) as response:
            config = json.load(response)
        notices = [
            c["props"].get("value") or ""
            for c in config["components"]
            if c["props"].get("elem_id") == "relay-health"
        ]
        log = app.log_since()
        assert app.process.poll() is None, "the app died after its failed TURN fetch"
    assert notices and "relay (TURN) is unavailable" in notices[0], notices
    assert "TURN relay credentials unavailable" in log, log
