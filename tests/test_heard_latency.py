"""Latency as the page hears it: the reducer, the panel, the hostile-input checks, the cuts.

Scripted events and made-up page messages, no browser: the page itself (a
spoken turn and a barge-in measured in real Chromium) is in tests/test_browser.py.
The cuts in what the server adds to what is heard are checked on audio frames
and RTP packets made here.
"""

from __future__ import annotations

import asyncio
import json
import re
from functools import partial

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket
from pipecat.frames.frames import OutputAudioRawFrame

from pipeline import events as ev
from pipeline.compat.aiortc import tighten_audio_jitter_buffer
from pipeline.transport import (
    microphone_resampler,
    without_lead_in,
)
from testkit.folding import folded
from ui import export, heard, render, state
from ui.views import VIEWS

HEARD_INPUT = "heard-latency-input"


run = folded


def turn(t0: float, v2v: float, text: str = "Hi there.") -> list[ev.Event]:
    """One user turn and the bot's reply, as the pipeline reports it."""
    return [
        ev.UserStartedSpeaking(t0),
        ev.UserStoppedSpeaking(t0 + 1.0),
        ev.UserTurnText(t0 + 1.0, "Hello"),
        ev.BotThinking(t0 + 1.1),
        ev.BotToken(t0 + 1.2, text),
        ev.BotStartedSpeaking(t0 + 1.0 + v2v),
        ev.LatencyMeasured(t0 + 1.0 + v2v, v2v),
        ev.BotStoppedSpeaking(t0 + 2.0 + v2v),
        ev.BotTurnText(t0 + 2.0 + v2v, text),
    ]


def barge_in(t0: float, server_stop: float) -> list[ev.Event]:
    """A long reply the user talks over at ``t0``; the server stops it ``server_stop`` later."""
    return [
        ev.UserStartedSpeaking(t0 - 3),
        ev.UserStoppedSpeaking(t0 - 2.5),
        ev.UserTurnText(t0 - 2.5, "Tell me a story"),
        ev.BotThinking(t0 - 2.4),
        ev.BotToken(t0 - 2.3, "Once upon a time a knight rode out."),
        ev.BotStartedSpeaking(t0 - 1.5),
        ev.LatencyMeasured(t0 - 1.5, 1.0),
        ev.UserStartedSpeaking(t0),
        ev.Interrupted(t0 + server_stop - 0.01),
        ev.BotStoppedSpeaking(t0 + server_stop),
        ev.BotTurnText(t0 + server_stop, "Once upon", interrupted=True),
    ]


def test_a_heard_reply_is_filed_with_its_turn_beside_the_servers_v2v():
    # The page's figure usually arrives after the server's; either order works.
    after = run(*turn(0, 2.08), ev.HeardLatency(4, "reply", 2690.0))
    before = run(*turn(0, 2.08)[:5], ev.HeardLatency(3, "reply", 2690.0), *turn(0, 2.08)[5:])
    for result in (after, before):
        assert result.heard == (state.Heard(1, "reply", 2.69),)
        assert heard.server_figure(result, result.heard[0]) == pytest.approx(2.08)
    panel = heard.render_heard(after)
    assert "2690 ms" in panel and "V2V 2080 ms" in panel and "+610 ms" in panel
    assert "network, buffering and playback" in panel


def test_each_turn_gets_its_own_heard_figure_and_the_stats_show_p50_and_p95():
    events = []
    for i, (v2v, heard_ms) in enumerate([(1.0, 1600.0), (1.2, 1900.0), (0.9, 1500.0)]):
        events += [*turn(10 * i, v2v), ev.HeardLatency(10 * i + 5, "reply", heard_ms)]
    folded = run(*events)
    assert [(h.turn, h.seconds) for h in folded.heard] == [(1, 1.6), (2, 1.9), (3, 1.5)]
    rows = re.findall(r'<tr data-measure="reply">(.*?)</tr>', heard.render_heard(folded))
    assert len(rows) == 3 and "+700 ms" in rows[1]
    stats = render.render_stats(folded)
    assert re.search(r"1600 ms</div><div class=\"stat-label\">heard p50", stats)
    assert re.search(r"1900 ms</div><div class=\"stat-label\">heard p95", stats)
    assert "median over the server's V2V" in heard.render_heard(folded)


def test_a_heard_barge_in_is_shown_against_the_servers_stop():
    folded = run(*barge_in(20, server_stop=0.38), ev.HeardLatency(21, "barge-in", 700.0))
    assert folded.server_barge_ins == (state.ServerBargeIn(1, pytest.approx(0.38)),)
    assert folded.heard == (state.Heard(1, "barge-in", 0.7),)
    panel = heard.render_heard(folded)
    assert re.search(r'data-measure="barge-in">.*700 ms.*stop 380 ms.*\+320 ms', panel)


def test_the_server_counts_no_barge_in_when_the_bot_was_not_speaking():
    folded = run(*turn(0, 1.0), *turn(10, 1.0))
    assert folded.server_barge_ins == () and folded.barge_in_detected_at is None


def test_before_any_measurement_the_panel_says_what_it_will_show_and_stats_add_nothing():
    folded = run(*turn(0, 1.0))
    assert "measured in your browser" in heard.render_heard(folded)
    assert "heard p50" not in render.render_stats(folded)
    assert "heard-latency" in [view.name for view in VIEWS]


def test_an_unknown_measure_in_a_replayed_file_changes_nothing():
    folded = run(*turn(0, 1.0))
    assert state.reduce(folded, ev.HeardLatency(5, "telepathy", 10.0)) == folded


def test_heard_figures_survive_export_and_replay():
    events = [*turn(0, 1.0), ev.HeardLatency(3, "reply", 1500.0), *barge_in(20, 0.4)]
    events.append(ev.HeardLatency(21, "barge-in", 650.0))
    exported = json.loads(json.dumps(export.export_session(events)))
    assert [e["kind"] for e in exported["events"]].count("HeardLatency") == 2
    assert export.replay(exported) == run(*events)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        42,
        "",
        "not json",
        "[1, 2]",
        '{"measure": "reply"}',
        '{"measure": "reply", "ms": "1200"}',
        '{"measure": "reply", "ms": true}',
        '{"measure": "reply", "ms": NaN}',
        '{"measure": "reply", "ms": Infinity}',
        '{"measure": "reply", "ms": -5}',
        '{"measure": "reply", "ms": 0}',
        '{"measure": "reply", "ms": 1e9}',
        '{"measure": "<script>", "ms": 100}',
        '{"measure": ["reply"], "ms": 100}',
        json.dumps({"measure": "reply", "ms": 100, "pad": "x" * 500}),
    ],
)
def test_anything_a_real_page_would_not_send_is_refused(raw):
    assert heard.parse_heard(raw, now=1.0) is None


def test_a_real_pages_figures_are_accepted():
    reply = heard.parse_heard('{"measure": "reply", "ms": 2690.4, "n": 3}', now=7.0)
    assert reply == ev.HeardLatency(7.0, "reply", 2690.4)
    assert heard.parse_heard('{"measure": "barge-in", "ms": 700}', now=8.0).ms == 700.0


def test_a_flooding_page_is_limited_per_connection_and_recovers():
    now = [0.0]
    intake = heard.HeardIntake(burst=4, refill_secs=2.0, clock=lambda: now[0])
    assert [intake.allow("a") for _ in range(6)] == [True] * 4 + [False] * 2
    assert intake.allow("b"), "one connection's flood must not limit another's"
    now[0] += 2.0
    assert intake.allow("a") and not intake.allow("a")
    now[0] += 3600.0  # a long quiet spell refills no more than the burst
    assert [intake.allow("a") for _ in range(5)] == [True] * 4 + [False]


# -- what the server adds to what is heard, cut -------------------------------------------


def reply_chunk(quiet_ms: float, loud_ms: float, rate: int = 24000) -> OutputAudioRawFrame:
    quiet = np.full(int(rate * quiet_ms / 1000), 40, dtype=np.int16)
    loud = np.full(int(rate * loud_ms / 1000), 8000, dtype=np.int16)
    return OutputAudioRawFrame(np.concatenate([quiet, loud]).tobytes(), rate, 1)


def test_a_replys_quiet_lead_in_is_not_sent_so_its_voice_is_heard_sooner():
    trimmed = without_lead_in(reply_chunk(quiet_ms=30, loud_ms=10))
    samples = np.frombuffer(trimmed.audio, dtype=np.int16)
    # 5 ms kept before the voice (no click), the rest of the 30 ms lead-in gone.
    assert len(samples) == 24 * (5 + 10)
    assert samples[-240:].min() == 8000
    assert without_lead_in(reply_chunk(quiet_ms=40, loud_ms=0)) is None
    loud = reply_chunk(quiet_ms=0, loud_ms=40)
    assert without_lead_in(loud) is loud


def test_the_server_hands_browser_audio_on_as_soon_as_a_frame_is_complete():
    """aiortc's default holds 4 frames (80 ms) before the first reaches the pipeline."""

    def released(buffer, packets: int) -> int:
        count = 0
        for n in range(packets):
            packet = RtpPacket(payload_type=111, sequence_number=n, timestamp=960 * n)
            packet._data = b"x"  # the depayloaded Opus frame, as the receiver sets it
            count += buffer.add(packet)[1] is not None
        return count

    async def receiver_buffer():
        pc = RTCPeerConnection()
        buffer = pc.addTransceiver("audio").receiver._RTCRtpReceiver__jitter_buffer
        await pc.close()
        return buffer

    assert released(JitterBuffer(capacity=16, prefetch=4), 2) == 0  # aiortc's own
    tighten_audio_jitter_buffer()
    tighten_audio_jitter_buffer()  # idempotent
    assert released(asyncio.run(receiver_buffer()), 2) == 1


def test_microphone_audio_reaches_the_pipeline_in_20_ms_frames_not_60():
    resampler = None
    out = []
    for i in range(12):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), dtype=np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 48000, 960 * i
        resampler = resampler or microphone_resampler(frame, 16000, "mono")
        out += [o.samples for o in resampler.resample(frame)]
    assert set(out) == {320} and len(out) >= 10


# -- the running app: the page's figure is hostile input -----------------------------------


async def _heard_event(http, app_url: str) -> int:
    async with http.get(f"{app_url}/config") as r:
        config = await r.json()
    box = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == HEARD_INPUT)
    return next(
        dep["id"] for dep in config["dependencies"] if [box, "input"] in map(list, dep["targets"])
    )


async def _send_heard(http, app_url: str, fn: int, session_hash: str, webrtc_id: str, raw) -> int:
    """What assets/heard_latency.js does, by hand: the hidden textbox's input event."""
    body = {
        "data": [raw, {"textbox": "", "webrtc_id": webrtc_id}],
        "event_data": None,
        "fn_index": fn,
        "session_hash": session_hash,
    }
    async with http.post(f"{app_url}/gradio_api/run/predict", json=body) as r:
        await r.read()
        return r.status


@pytest.mark.slow
async def test_a_foreign_or_garbage_heard_figure_is_refused_and_the_session_lives_on(tmp_path):
    """Another page's figure, garbage and a flood are dropped; the visitor's own is filed."""
    from testkit.app import AppProcess
    from testkit.webrtc_client import WebRTCClient, http_session, page_api, question_audio

    async with AppProcess(tmp_path / "app.log", max_sessions=2) as app, http_session() as http:
        fn = await _heard_event(http, app.url)
        visitor = WebRTCClient(http, app.url, await page_api(http, app.url), name="visitor")
        try:
            await visitor.connect()
            await visitor.wait_until_live()
            send = partial(_send_heard, http, app.url, fn)
            # Another page naming the visitor's connection (ids are guessable: Math.random()).
            foreign = json.dumps({"measure": "reply", "ms": 111.0})
            assert await send("attacker-session", visitor.webrtc_id, foreign) == 200
            for raw in ('{"measure": "reply", "ms": NaN}', "x" * 100_000, 7, [1], None):
                assert await send(visitor.session_hash, visitor.webrtc_id, raw) == 200
            own = [json.dumps({"measure": "reply", "ms": 1000.0 + i}) for i in range(20)]
            for raw in own:  # a flood: only the burst gets through
                await send(visitor.session_hash, visitor.webrtc_id, raw)

            question = "What is the capital of France?"
            answered = await visitor.turn(question, question_audio(question))
            assert answered["voice_to_voice"] is not None, f"unanswered: {answered}"
            filed = [e for e in await visitor.export_events() if e["kind"] == "HeardLatency"]
        finally:
            await visitor.close()
    assert [e["ms"] for e in filed] == [1000.0 + i for i in range(heard.BURST)], filed
    assert "Traceback" not in app.log_since()
