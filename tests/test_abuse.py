"""The running app attacked as on a public Space: over HTTP and aiortc, from 127.0.0.1 only.

One ``python app.py`` with two session slots, one slot per client, and a 3 s
admission window, run as behind a proxy at 127.0.0.1
(``VOICE_LAB_TRUSTED_PROXIES``, as ``python -m deploy`` runs workers behind
HAProxy): clients are told apart by the ``X-Forwarded-For`` entry that proxy
appends (here a header only, no traffic goes anywhere). Each attack is
followed, and where it matters accompanied, by a real visitor who must still
be answered: a spoken question, a reply heard over WebRTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import string
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from testkit.app import AppProcess
from testkit.env import fake_provider_env
from testkit.fakes.groq import FakeGroq
from testkit.loop import serving_in_thread
from testkit.webrtc_client import (
    OfferRefused,
    PageApi,
    WebRTCClient,
    page_api,
    question_audio,
)

pytestmark = pytest.mark.slow

LIMIT = 2
ADMISSION_SECS = 3.0
ATTACKER_KEY = "gsk_attacker_key_0123456789abcdef"
QUESTION = "What is the capital of France?"
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")


@pytest.fixture(scope="module")
def groq() -> Iterator[FakeGroq]:
    """What an attacker would switch a victim to, with the attacker's key."""
    with serving_in_thread(FakeGroq(api_key=ATTACKER_KEY)) as fake:
        yield fake


@pytest.fixture(scope="module")
async def app(groq, tmp_path_factory):
    log = tmp_path_factory.mktemp("abuse") / "app.log"
    env = {
        "VOICE_LAB_MAX_SESSIONS_PER_CLIENT": "1",
        "VOICE_LAB_TRUSTED_PROXIES": "127.0.0.1",
        "VOICE_LAB_ADMISSION_SECS": str(ADMISSION_SECS),
        **fake_provider_env(groq, keys=False),
    }
    async with AppProcess(log, max_sessions=LIMIT, extra_env=env) as app:
        yield app


@contextlib.asynccontextmanager
async def client_http(
    forwarded_for: str, local_address: str = "127.0.0.1"
) -> AsyncIterator[aiohttp.ClientSession]:
    """HTTP as one visitor: the ``X-Forwarded-For`` the proxy at 127.0.0.1 would send."""
    async with aiohttp.ClientSession(
        headers={"X-Forwarded-For": forwarded_for},
        timeout=aiohttp.ClientTimeout(total=30),
        # uvicorn drops a kept-alive connection after a route raised (Gradio's own 500s).
        connector=aiohttp.TCPConnector(force_close=True, local_addr=(local_address, 0)),
    ) as http:
        yield http


def random_id(k: int = 11) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=k))


@contextlib.asynccontextmanager
async def live_client(http, app, api: PageApi, name: str) -> AsyncIterator[WebRTCClient]:
    """A visitor connected over WebRTC with its session running; closed afterwards."""
    client = WebRTCClient(http, app.url, api, name=name)
    try:
        await client.connect()
        await client.wait_until_live()
        yield client
    finally:
        await client.close()


async def visitor_is_answered(app, address: str) -> None:
    """A real visitor connects, asks a question and hears a reply."""
    async with client_http(address) as http:
        api = await page_api(http, app.url)
        async with live_client(http, app, api, f"visitor-{address}") as visitor:
            result = await visitor.turn(QUESTION, question_audio(QUESTION))
    assert result["voice_to_voice"] is not None, f"the visitor was not answered: {result}"


async def server_fn(http, app, api: PageApi, fn_name: str, data, session_hash: str):
    body = {
        "data": data,
        "component_id": api.webrtc_id,
        "fn_name": fn_name,
        "session_hash": session_hash,
    }
    async with http.post(f"{app.url}/gradio_api/component_server", json=body) as r:
        return r.status, await r.text()


async def call_event(http, app, fn_index: int, data: list, session_hash: str) -> list[dict]:
    """Join Gradio's queue as the page does; returns every message of that event."""
    body = {"data": data, "event_data": None, "fn_index": fn_index, "session_hash": session_hash}
    async with http.post(f"{app.url}/gradio_api/queue/join", json=body) as r:
        r.raise_for_status()
        event_id = (await r.json())["event_id"]
    messages = []
    url = f"{app.url}/gradio_api/queue/data?session_hash={session_hash}"
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=20)) as r:
        async for line in r.content:
            if not line.startswith(b"data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") != event_id:
                continue
            messages.append(message)
            if message.get("msg") == "process_completed":
                return messages
    return messages


async def dependency_of(http, app, elem_id: str, event: str) -> int:
    async with http.get(f"{app.url}/config") as r:
        config = await r.json()
    component = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == elem_id)
    return next(
        dep["id"]
        for dep in config["dependencies"]
        if [component, event] in [list(t) for t in dep["targets"]]
    )


def no_traceback(text: str) -> None:
    assert not any(marker in text for marker in TRACEBACK_MARKERS), text[:2000]


async def test_garbage_offers_take_no_slot_and_get_no_traceback(app):
    async with client_http("10.1.0.1") as http:
        api = await page_api(http, app.url)
        garbage = [
            {"sdp": "v=0 garbage", "type": "offer", "webrtc_id": random_id()},
            {"sdp": "v=0\r\nm=video 9 RTP/AVP 0\r\n", "type": "offer", "webrtc_id": random_id()},
            {"sdp": 12, "type": "offer", "webrtc_id": random_id()},
            {"sdp": "v=0", "type": "offer", "webrtc_id": "../../etc/passwd"},
            {"sdp": "v=0", "type": "offer"},
            {"type": "ice-candidate", "webrtc_id": random_id(), "candidate": {"candidate": "x"}},
            "not an object",
            None,
        ]
        for _ in range(LIMIT + 1):  # more than there are slots
            for body in garbage:
                status, text = await server_fn(http, app, api, "offer", body, random_id())
                assert status == 200, text
                no_traceback(text)
                assert json.loads(text)["status"] == "failed"
        # Our handling logged no traceback either (Gradio's own routes below may).
        no_traceback(app.log_tail(100_000).split("Voice Lab ready")[-1])
        # Routes of Gradio's own: an unknown component, a bad body, a missing function.
        for payload in (
            {"data": {}, "component_id": 99999, "fn_name": "offer", "session_hash": "x"},
            {"data": {}, "component_id": api.webrtc_id, "fn_name": "nope", "session_hash": "x"},
        ):
            async with http.post(f"{app.url}/gradio_api/component_server", json=payload) as r:
                no_traceback(await r.text())
        async with http.post(f"{app.url}/gradio_api/component_server", data=b"{") as r:
            no_traceback(await r.text())
    await visitor_is_answered(app, "10.1.0.2")


async def _hog(http, app, api: PageApi, *, data_channel: bool):
    """A peer connection that connects but never sends a single audio packet."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    class Mute(MediaStreamTrack):
        kind = "audio"

        async def recv(self):
            await asyncio.Event().wait()  # never a frame

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(Mute())
    if data_channel:
        pc.createDataChannel("text")
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def _():
        if pc.connectionState == "connected":
            connected.set()

    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer", "webrtc_id": random_id()}
    _, text = await server_fn(http, app, api, "offer", body, random_id())
    answer = json.loads(text)
    if "sdp" not in answer:
        await pc.close()
        return None, answer
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await asyncio.wait_for(connected.wait(), 15)
    return pc, answer


async def test_silent_clients_lose_their_slots_and_one_client_cannot_take_them_all(app):
    async with client_http("10.2.0.1") as http, client_http("10.2.0.2") as http2:
        api = await page_api(http, app.url)
        # One attacker address: its first connection is let in, the second is not.
        first, _ = await _hog(http, app, api, data_channel=False)
        assert first is not None
        second, refusal = await _hog(http, app, api, data_channel=True)
        assert second is None and refusal["meta"]["error"] == "concurrency_limit_reached"
        # A second attacker address takes the other slot, with a data channel this time.
        other, _ = await _hog(http2, app, api, data_channel=True)
        assert other is not None
        try:
            # Both slots are held by mute connections; within the admission window
            # plus a little they must be closed and the slots freed for a visitor.
            await asyncio.sleep(ADMISSION_SECS + 2.0)  # the attack's duration, not a sync
            for pc in (first, other):
                assert pc.connectionState in ("closed", "failed"), pc.connectionState
        finally:
            for pc in (first, other):
                await pc.close()
    await visitor_is_answered(app, "10.2.0.3")


async def test_another_session_cannot_read_steer_stop_or_export_a_connection(app, groq):
    async with client_http("10.3.0.1") as victim_http, client_http("10.3.0.2") as attacker_http:
        api = await page_api(victim_http, app.url)
        async with live_client(victim_http, app, api, "victim") as victim:
            stolen = {"textbox": "", "webrtc_id": victim.webrtc_id}
            attacker = random_id()
            # The attacker's own settings: Groq for the LLM, with the attacker's key.
            key_blur = await dependency_of(attacker_http, app, "groq-key", "blur")
            await call_event(attacker_http, app, key_blur, [None, ATTACKER_KEY], attacker)
            llm_input = await dependency_of(attacker_http, app, "llm-provider", "input")
            await call_event(attacker_http, app, llm_input, [None, "groq"], attacker)

            # ... pushed into the victim's session (fastrtc's tick / change event).
            await call_event(attacker_http, app, api.tick_fn, [stolen, None], attacker)
            # ... the victim's live dashboard, read from the attacker's page.
            watched = await call_event(attacker_http, app, api.state_change_fn, [stolen], attacker)
            assert not [m for m in watched if m.get("msg") == "process_generating"], watched
            # ... the victim's dashboard stream, stopped.
            await server_fn(attacker_http, app, api, "quit_output_stream", stolen, attacker)
            # ... an ICE candidate injected into the victim's connection.
            candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
            _, text = await server_fn(
                attacker_http,
                app,
                api,
                "offer",
                {"type": "ice-candidate", "webrtc_id": victim.webrtc_id, "candidate": candidate},
                attacker,
            )
            assert json.loads(text)["status"] == "failed"

            updates_before = victim.queue_messages.get("process_generating", 0)
            result = await victim.turn(QUESTION, question_audio(QUESTION))
            assert result["voice_to_voice"] is not None, result
            assert not groq.requests_to("chat"), "the victim's session ran on the attacker's LLM"
            assert victim.queue_messages.get("process_generating", 0) > updates_before, (
                "the victim's dashboard stopped updating"
            )
            # ... and the victim's session exported by the attacker.
            export = await dependency_of(attacker_http, app, "export-button", "click")
            exported = await call_event(attacker_http, app, export, [stolen], attacker)
            completed = exported[-1]
            assert completed["msg"] == "process_completed" and not completed["success"]
            assert "Nothing to export" in json.dumps(completed)


async def test_a_connection_id_cannot_be_offered_twice(app):
    """Re-offering a live id would have re-registered (hijacked) its handler."""
    async with client_http("10.4.0.1") as http, client_http("10.4.0.2") as other_http:
        api = await page_api(http, app.url)
        async with live_client(http, app, api, "victim") as victim:
            thief = WebRTCClient(other_http, app.url, api, name="thief")
            thief.webrtc_id = victim.webrtc_id
            with pytest.raises(OfferRefused):
                await thief.connect()
            await thief.close()
            result = await victim.turn(QUESTION, question_audio(QUESTION))
            assert result["voice_to_voice"] is not None, result


@pytest.mark.parametrize(
    ("first", "second", "neighbour"),
    [
        # IPv6 addresses of one /64 are one client; the next /64 is another.
        (("2001:db8:1:2::1",), ("2001:db8:1:2::beef",), "2001:db8:1:3::1"),
        # What a client writes left of the address the proxy appended proves nothing.
        (("6.6.6.6, 10.5.0.1",), ("7.7.7.7, 10.5.0.1",), "10.5.0.2"),
        # A header from a peer that is not the proxy is not read at all.
        (("10.6.0.1", "127.0.0.2"), ("10.6.0.2", "127.0.0.2"), "10.6.0.3"),
    ],
)
async def test_a_client_is_what_the_trusted_proxy_saw(app, first, second, neighbour):
    """One client, however it dresses its requests: its second connection is refused."""
    async with (
        client_http(*first) as http,
        client_http(*second) as other_http,
        client_http(neighbour) as neighbour_http,
    ):
        api = await page_api(http, app.url)
        async with live_client(http, app, api, "first"):
            again = WebRTCClient(other_http, app.url, api, name="second")
            try:
                with pytest.raises(OfferRefused) as refusal:
                    await again.connect()
            finally:
                await again.close()
            assert refusal.value.answer["meta"].get("per_client"), refusal.value.answer
            # Another client gets the other slot.
            async with live_client(neighbour_http, app, api, "neighbour"):
                pass
    await visitor_is_answered(app, "10.6.0.9")
