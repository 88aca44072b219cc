"""One determined address against ``python app.py``: it must not take the Space down.

The attacks of :mod:`testkit.attacks` (the same ones ``python -m bench abuse``
measures), each from a loopback address of its own, against one app with two
slots, no proxy trusted, and the per-client limit set as high as the slots (the
app must still keep one back). After each, and during those that last, a real
visitor from another address connects, asks a spoken question and must hear
the answer; and nothing the attacker did may leave a traceback in the log.
"""

from __future__ import annotations

import pytest

from testkit import attacks
from testkit.attacks import (
    ADMISSION_SECS,
    HANDSHAKE_SECS,
    HOSTILE_CANDIDATES,
    OFFERS_PER_MINUTE,
    SLOTS,
    UPLOAD_CACHE_MB,
    UPLOAD_MB_PER_CLIENT,
)
from ui.server import QUEUE_PER_CLIENT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def target(tmp_path_factory):
    async with attacks.abuse_target(tmp_path_factory.mktemp("one-address") / "app.log") as target:
        yield target


@pytest.fixture
def log_offset(target) -> int:
    """Where the app's log stood when the test began; no traceback may follow it."""
    offset = target.app.log_size()
    yield offset
    assert target.log_tracebacks(offset) == 0, target.app.log_since(offset)[-4000:]


async def a_visitor_is_answered(target, **options) -> dict:
    seen = await attacks.visitor(target, **options)
    assert seen["answered"], f"the visitor was not answered: {seen}"
    return seen


async def test_offers_no_browser_sends_are_refused_and_a_stalled_handshake_frees_its_slot(
    target, log_offset
):
    # No fingerprint, a malformed one, no ICE credentials: every half second.
    async with attacks.lockout_offers(target) as spam:
        await a_visitor_is_answered(target)
    assert spam["offers"] >= 4 and spam["answered"] == 0, spam
    assert set(spam["refusals"]) <= {"invalid_offer", "rate_limited"}, spam

    # Well-formed offers with a wrong fingerprint take every slot; their DTLS can
    # never complete. The visitor keeps pressing Record: let in once the first
    # handshake has stalled for HANDSHAKE_SECS, long before the admission window.
    async with attacks.stuck_handshakes(target) as held:
        assert held["answered"] == SLOTS, held
        waiting = await a_visitor_is_answered(target, retry_for=ADMISSION_SECS + 5)
    assert waiting["refusals"], "the slots were not all taken"
    # Freed HANDSHAKE_SECS after its offer (plus a retry, and load); it used to be ADMISSION_SECS.
    assert waiting["admitted_after"] < HANDSHAKE_SECS + 4 < ADMISSION_SECS, waiting
    await a_visitor_is_answered(target)


async def test_an_offer_with_many_audio_sections_is_refused_and_costs_nothing(target, log_offset):
    before = target.figures()
    attack = await attacks.many_audio_sections(target, sections=16)
    after = target.figures()
    assert not attack["answered"] and attack["error"] == "invalid_offer", attack
    assert after["threads"] <= before["threads"] + 2, (before, after)
    assert after["rss_mb"] < before["rss_mb"] + 50, (before, after)
    await a_visitor_is_answered(target)


async def test_time_on_the_servers_key_is_the_visitors_across_reconnects_and_reloads(
    target, log_offset
):
    attack = await attacks.server_key_reconnects(target)
    assert attack["spent"], f"the budget was never shown as used up: {attack}"
    for page in ("same page", "new page"):
        seen = attack[page]
        assert seen["answered"], (page, attack)
        assert seen["server_key_calls"] == 0, f"{page}: a fresh budget on the server's key"
        assert seen["used_up_shown"], f"{page}: the visitor was not told why: {attack}"


async def test_one_address_holds_fewer_than_every_slot_whatever_it_claims(target, log_offset):
    # From 127.0.0.1, each connection claiming another address in X-Forwarded-For
    # (which uvicorn believes from 127.0.0.1 unless told otherwise).
    async with attacks.spoofed_connections(target, connections=SLOTS) as spoof:
        await a_visitor_is_answered(target)
    assert spoof["admitted"] == SLOTS - 1, spoof
    (refusal,) = spoof["refusals"]
    assert refusal["error"] == "concurrency_limit_reached" and refusal["per_client"], refusal
    await a_visitor_is_answered(target)


async def test_offers_are_rate_limited_per_client(target, log_offset):
    flood = await attacks.offer_flood(target, offers=OFFERS_PER_MINUTE + 10)
    assert flood["refusals"]["rate_limited"] >= 10, flood
    assert sum(flood["refusals"].values()) == OFFERS_PER_MINUTE + 10, flood
    await a_visitor_is_answered(target)


async def test_one_client_cannot_fill_the_queue(target, log_offset):
    async with attacks.queue_flood(target, joins=150) as flood:
        queued = await attacks.visitor_queued(target)
    assert 503 not in flood["statuses"], f"the queue filled up: {flood}"
    assert flood["statuses"][429] > 0 and flood["statuses"][200] >= QUEUE_PER_CLIENT, flood
    assert queued["answered"], queued
    await a_visitor_is_answered(target)


async def test_hostile_requests_are_refused_without_a_traceback_or_a_route_list(target, log_offset):
    async with attacks.hostile_requests(target) as hostile:
        await a_visitor_is_answered(target)
    assert hostile["statuses"]["component_server 404"] == 3, hostile
    assert hostile["statuses"]["candidate invalid_candidate_format"] == len(HOSTILE_CANDIDATES)
    assert hostile["/openapi.json"] == 404 and hostile["/gradio_api/openapi.json"] == 404
    assert hostile["run past the queue"] == 404, hostile
    log = target.app.log_since(log_offset)
    refusals = [line for line in log.splitlines() if "refused a" in line]
    # One line per refused request, never more.
    assert len(refusals) <= hostile["requests"], refusals[:20]
    assert any("refused a request to" in line for line in refusals), log[-3000:]
    await a_visitor_is_answered(target)


async def test_tool_arguments_that_are_not_an_object_get_the_tool_card_and_the_apology(
    target, log_offset
):
    attack = await attacks.non_object_tool_arguments(target, arguments=[1, 2, 3, 4])
    assert attack["answered"], attack
    assert attack["tool_cards"] == [("lookup_order", False)], attack
    assert attack["apology_spoken"], attack
    assert any("not an object" in message for message in attack["errors"]), attack
    await a_visitor_is_answered(target)


async def test_uploads_are_bounded_per_client_and_in_total(target, log_offset):
    """Last: it leaves the upload cache full, as a many-address attack would until the sweep."""
    async with attacks.upload_flood(target, uploads=40, size=7 * attacks.MB) as flood:
        replay = await attacks.visitor_replay(target)
    statuses = flood["statuses"]
    assert statuses[200] <= UPLOAD_MB_PER_CLIENT // 7 and statuses[429] >= 38, flood
    assert flood["cache_mb_after"] - flood["cache_mb_before"] <= UPLOAD_MB_PER_CLIENT, flood
    assert replay["replayed"] and not replay["file_left"], replay

    filled = await attacks.fill_upload_cache(target)
    assert filled["statuses"][507] == 1, filled
    assert filled["cache_mb"] <= UPLOAD_CACHE_MB, filled
    await a_visitor_is_answered(target)
