"""Who a client is, and the limits counted per client, without a server.

The running app is attacked in ``tests/test_one_address.py`` and
``tests/test_abuse.py``; here are the decisions themselves: which address a
request is counted by, what an offer must carry, the sliding windows.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from pipeline import server_settings
from testkit.attacks import (
    HOSTILE_CANDIDATES,
    aiortc_offer,
    with_fingerprint,
    without_fingerprint,
    without_ice_credentials,
    wrong_fingerprint,
)
from ui.clients import (
    ClientAddress,
    TrustedProxies,
    client_key,
    client_of_scope,
    keep_uvicorn_out_of_it,
)
from ui.limits import RateWindow
from ui.webrtc_guard import candidate_problem, offer_problem

# -- which address -------------------------------------------------------------------


def test_by_default_the_header_is_never_read():
    proxies = TrustedProxies.from_env({})
    assert not proxies.enabled
    assert proxies.client_address("127.0.0.1", ["203.0.113.9"]) == "127.0.0.1"


def test_behind_a_trusted_proxy_the_right_most_untrusted_entry_is_the_client():
    proxies = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8")
    # The client wrote the left part; our proxies appended what they saw.
    assert proxies.client_address("127.0.0.1", ["6.6.6.6, 203.0.113.9, 10.1.2.3"]) == (
        "203.0.113.9"
    )
    # Several header lines are one list, in order.
    assert proxies.client_address("127.0.0.1", ["6.6.6.6", "203.0.113.9:4711"]) == "203.0.113.9"
    # An untrusted peer's header proves nothing.
    assert proxies.client_address("192.0.2.7", ["203.0.113.9"]) == "192.0.2.7"
    # A trusted peer that forwarded nothing is the client itself.
    assert proxies.client_address("10.0.0.5", []) == "10.0.0.5"
    # Garbage a trusted proxy passed on: counted as that proxy's, never believed.
    assert proxies.client_address("127.0.0.1", ["203.0.113.9, not-an-ip"]) == "127.0.0.1"


def test_a_space_trusts_its_proxy_one_hop_and_the_old_switch_still_works():
    on_a_space = TrustedProxies.from_env({"SPACE_ID": "someone/voice-lab"})
    assert on_a_space.any_peer
    # Whatever connects is the proxy; the entry it appended (the last) is the client.
    assert on_a_space.client_address("10.9.8.7", ["1.1.1.1, 203.0.113.9"]) == "203.0.113.9"
    assert TrustedProxies.from_env({"VOICE_LAB_TRUST_FORWARDED_FOR": "1"}).any_peer
    assert not TrustedProxies.from_env(
        {"SPACE_ID": "x", "VOICE_LAB_TRUST_FORWARDED_FOR": "0"}
    ).enabled
    # The explicit list wins over both.
    listed = TrustedProxies.from_env({"SPACE_ID": "x", "VOICE_LAB_TRUSTED_PROXIES": "127.0.0.1"})
    assert not listed.any_peer and listed.client_address("10.9.8.7", ["1.1.1.1"]) == "10.9.8.7"


def test_a_bad_trusted_proxy_entry_stops_the_app_with_its_name():
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300'"):
        TrustedProxies.parse("127.0.0.1,10.0.0.300")


def test_ipv6_clients_are_grouped_per_64_and_mapped_ipv4_is_ipv4():
    a, b = client_key("2001:db8:1:2::1"), client_key("2001:db8:1:2:ffff::9")
    assert a == b == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != a
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key(None) == "unknown"


async def _scope_seen(middleware_proxies: TrustedProxies, scope: dict) -> dict:
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    await ClientAddress(app, middleware_proxies)(scope, None, None)
    return seen


async def test_the_middleware_puts_the_decision_where_everyone_reads_it():
    headers = [(b"x-forwarded-for", b"203.0.113.9"), (b"x-forwarded-proto", b"https")]
    scope = {"type": "http", "client": ("127.0.0.1", 5000), "headers": headers, "scheme": "http"}
    seen = await _scope_seen(TrustedProxies.parse("127.0.0.1"), dict(scope))
    assert seen["client"][0] == "203.0.113.9" and seen["scheme"] == "https"
    assert client_of_scope(seen) == "203.0.113.9"
    untouched = await _scope_seen(TrustedProxies(), dict(scope))
    assert untouched["client"] == ("127.0.0.1", 5000) and untouched["scheme"] == "http"


def test_uvicorn_is_told_to_trust_no_forwarded_header():
    environ = {"FORWARDED_ALLOW_IPS": "*"}
    keep_uvicorn_out_of_it(environ)
    assert environ["FORWARDED_ALLOW_IPS"] == ""


# -- how many --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "per_client", "expected"),
    [("4", "2", 2), ("2", "2", 1), ("2", "8", 1), ("1", "2", 1), ("10", "3", 3), ("4", "0", 1)],
)
def test_one_client_never_holds_every_slot(monkeypatch, total, per_client, expected):
    monkeypatch.setenv("VOICE_LAB_MAX_SESSIONS", total)
    monkeypatch.setenv("VOICE_LAB_MAX_SESSIONS_PER_CLIENT", per_client)
    assert server_settings.ServerSettings.from_environ().per_client == expected


def test_a_window_lets_through_its_limit_then_says_when_to_come_back():
    now = [0.0]
    window = RateWindow(3, 60, clock=lambda: now[0])
    assert [window.take("a") for _ in range(4)] == [True, True, True, False]
    assert window.take("b"), "another client has its own allowance"
    now[0] = 10.0
    assert window.retry_after("a") == pytest.approx(50.0)
    now[0] = 60.0  # the three have left the window
    assert [window.take("a") for _ in range(4)] == [True, True, True, False]
    assert window.retry_after("a", amount=4) == math.inf


def test_a_window_forgets_the_least_recent_clients_beyond_its_bound():
    window = RateWindow(1, 60, max_keys=2, clock=lambda: 0.0)
    assert window.take("a") and window.take("b") and window.take("c")
    assert window.take("a"), "'a' was forgotten (memory stays bounded)"
    assert not window.take("c")


# -- what an offer must carry ----------------------------------------------------------


async def test_only_what_a_browser_sends_is_an_acceptable_offer():
    pc, sdp = await aiortc_offer()
    many, many_sdp = await aiortc_offer(audio_sections=16)
    bare, bare_sdp = await aiortc_offer(data_channel=False)
    try:
        assert offer_problem(sdp) is None
        assert offer_problem(bare_sdp) is None, "the data channel is the page's, not required"
        assert offer_problem(with_fingerprint(sdp, wrong_fingerprint())) is None, (
            "a wrong fingerprint is well-formed: only the handshake can tell"
        )
        assert offer_problem(many_sdp) == "16 audio sections, not one"
        assert offer_problem(without_fingerprint(sdp)) == "no valid DTLS fingerprint"
        for bad in ("sha-256 00:11:22", "sha-1 " + ":".join(["AB"] * 20), "sha-256 zz"):
            assert offer_problem(with_fingerprint(sdp, bad)) == "no valid DTLS fingerprint", bad
        assert offer_problem(without_ice_credentials(sdp)) == "no ICE credentials"
        video = sdp.replace("m=audio", "m=video", 1)
        assert offer_problem(video) == "0 audio sections, not one"
        assert offer_problem("v=0\r\nnonsense") is not None
        assert offer_problem(12) == "not an SDP offer"
    finally:
        await asyncio.gather(pc.close(), many.close(), bare.close())


def test_only_candidates_a_browser_trickles_reach_fastrtc():
    chrome = (
        "candidate:842163049 1 udp 1677729535 203.0.113.9 61665 typ srflx raddr 0.0.0.0 "
        "rport 0 generation 0 ufrag sAq5 network-cost 999"
    )
    hidden = (
        "candidate:3 1 udp 2122260223 1f0b2c4e-5d6a-4b7c-8d9e-0a1b2c3d4e5f.local 53421 "
        "typ host generation 0 ufrag sAq5 network-id 1"
    )
    assert candidate_problem({"candidate": chrome, "sdpMid": "0", "sdpMLineIndex": 0}) is None
    assert candidate_problem({"candidate": hidden}) is None
    for hostile in HOSTILE_CANDIDATES:
        assert candidate_problem(hostile) is not None, hostile
