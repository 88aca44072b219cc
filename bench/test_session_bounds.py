"""A visitor whose connection goes ends as a failed session with its reason, never a hang.

The client is real (aiortc peer connection, microphone track) but never
connected: nothing pulls its microphone's frames, as when the server closed the
connection under it, so speech never finishes leaving it. Every wait must see
the connection go (or hit its bound) instead of waiting for ever.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench.webrtc import SessionFailed, _run_client
from testkit.webrtc_client import SAMPLE_RATE, ConnectionLost, PageApi, WebRTCClient

API = PageApi(webrtc_id=1, tick_fn=2, state_change_fn=3)
QUESTION = np.full(SAMPLE_RATE // 2, 1000, dtype=np.int16)  # half a second of "voice"


async def lost_client() -> WebRTCClient:
    """A visitor whose peer connection closed (as when the server's ICE consent expired)."""
    client = WebRTCClient(None, "http://127.0.0.1:9", API, name="visitor")
    await client.pc.close()
    assert client.gone.is_set() and "closed" in client.lost
    return client


async def test_a_turn_on_a_lost_connection_raises_at_once():
    client = await lost_client()
    with pytest.raises(ConnectionLost, match=r"closed .* while speaking"):
        await asyncio.wait_for(client.turn("hello?", QUESTION), 5)


async def test_a_session_whose_connection_goes_mid_way_is_reported_failed_with_where_and_why():
    client = await lost_client()

    async def connected() -> None:  # the offer and ICE went through; the rest is lost
        client.connected.set()
        client.outputs_seen.set()

    client.connect = connected
    with pytest.raises(SessionFailed) as failure:
        await asyncio.wait_for(_run_client(client, [("hello?", QUESTION)] * 2), 10)
    reason = str(failure.value)
    assert "visitor failed while in turn 1" in reason and "closed" in reason, reason
    assert failure.value.partial["turns"] == [], failure.value.partial  # none was answered
