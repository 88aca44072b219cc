"""Traces and metrics of ``python app.py``, read back from the real receivers teams run.

One app process, one visitor, two spoken turns (each a tool call on the Groq
fake's LLM), with Arize Phoenix receiving the traces over OTLP/HTTP and
Debian's Prometheus scraping ``/metrics`` every second with a bearer token.
Canary keys go in once through the environment and once typed over them on
the page, as in ``test_no_keys_in_logs``. The figures the receivers hold are
compared with the dashboard's, from the session's own export.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import dataclass

import aiohttp
import pytest

from pipeline.telemetry.metrics import LATENCY_BUCKETS
from testkit.app import AppProcess
from testkit.env import fake_provider_env
from testkit.fakes.elevenlabs import FakeElevenLabs
from testkit.fakes.groq import FakeGroq
from testkit.loop import serving_in_thread
from testkit.receivers import Phoenix, Prometheus
from testkit.webrtc_client import WebRTCClient, page_api, question_audio
from tests.test_no_keys_in_logs import (
    elevenlabs_canary,
    groq_canary,
    leaked,
    page_event,
    server_keys,
)
from ui import export, state

pytestmark = pytest.mark.slow

QUESTION = "What time is it in Madrid?"
TOKEN = "scrape-token-for-the-test-0123456789"
# TTFB attributes and the dashboard's figures are the same measurement: they may
# differ by float rounding only, allowed a few milliseconds.
TTFB_TOLERANCE = 0.005


@dataclass
class Run:
    app: AppProcess
    phoenix: Phoenix
    prometheus: Prometheus
    canaries: dict[str, dict[str, str]]
    events: list[dict]
    download: dict | None
    turns: list[dict]
    trace_id: str
    spans: list[dict]
    metrics_status: dict[str, int]
    metrics_text: str


async def _metrics(http, url: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{url}/metrics", headers=headers) as r:
        return r.status, await r.text()


async def _conversation(phoenix: Phoenix, session_id: str, timeout: float = 60) -> dict:
    """The session's conversation span, once Phoenix has it (it ends with the session)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = await asyncio.to_thread(phoenix.spans)
        for span in spans:
            attributes = span.get("attributes") or {}
            if span["name"] == "conversation" and attributes.get("session.id") == session_id:
                return span
        if time.monotonic() > deadline:
            raise TimeoutError(f"no conversation span for {session_id} in Phoenix: {spans[:3]}")
        await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
async def run(tmp_path_factory) -> Run:
    env_keys = {"groq": groq_canary(), "elevenlabs": elevenlabs_canary()}
    typed_keys = {"groq": groq_canary(), "elevenlabs": elevenlabs_canary()}
    # The fakes take only the typed keys: answered at all means answered on them.
    groq = FakeGroq(api_key=typed_keys["groq"], transcript=lambda _wav: QUESTION)
    eleven = FakeElevenLabs(api_key=typed_keys["elevenlabs"])
    audio = question_audio(QUESTION)
    log = tmp_path_factory.mktemp("telemetry") / "app.log"
    with serving_in_thread(groq), serving_in_thread(eleven), Phoenix() as phoenix:
        app = AppProcess(
            log,
            extra_env={
                **server_keys(env_keys),
                **fake_provider_env(groq, eleven, keys=False),
                "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                "VOICE_LAB_METRICS_TOKEN": TOKEN,
            },
        )
        target = app.url.removeprefix("http://")
        with Prometheus([target], TOKEN, also_without_token=True) as prometheus:
            async with app, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(60)) as http:
                client = WebRTCClient(http, app.url, await page_api(http, app.url), "visitor")
                try:
                    for provider, key in typed_keys.items():
                        await page_event(
                            http, app.url, client.session_hash, f"{provider}-key", "blur", key
                        )
                    await client.connect()
                    await client.wait_until_live(60)
                    await client.pause(0.5)
                    turns = []
                    for _ in range(2):
                        turns.append(await client.turn(QUESTION, audio))
                        await client.pause(1.0)
                    events = await client.export_events()
                    download = await client.download_trace()
                finally:
                    await client.close()
                statuses = {}
                for name, token in (("none", None), ("wrong", "not-the-token"), ("right", TOKEN)):
                    statuses[name], text = await _metrics(http, app.url, token)
                session_id = next(e["session_id"] for e in events if e["kind"] == "SessionStarted")
                conversation = await _conversation(phoenix, session_id)
                trace_id = conversation["context"]["trace_id"]
                spans = await asyncio.to_thread(phoenix.spans, trace_id)
                yield Run(
                    app,
                    phoenix,
                    prometheus,
                    {"environment": env_keys, "typed": typed_keys},
                    events,
                    download,
                    turns,
                    trace_id,
                    spans,
                    statuses,
                    text,
                )


def _dashboard(events: list[dict]) -> state.SessionState:
    return export.replay({"format": export.FORMAT, "events": events})


def _by_name(spans: list[dict], name: str) -> list[dict]:
    return [s for s in spans if s["name"] == name]


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def test_the_turns_were_answered_on_the_typed_keys(run: Run):
    assert all(t["voice_to_voice"] is not None for t in run.turns), run.app.log_tail()
    final = _dashboard(run.events)
    assert final.user_turns == 2 and len(final.latency) == 2
    assert [c.name for c in final.tool_calls] == ["time_in_city", "time_in_city"]
    assert final.providers.label.startswith("Groq whisper")


def test_phoenix_holds_the_conversation_its_turns_and_their_stt_llm_tts_and_tool_spans(run: Run):
    spans = {s["context"]["span_id"]: s for s in run.spans}
    (conversation,) = _by_name(run.spans, "conversation")
    turns = sorted(_by_name(run.spans, "turn"), key=lambda s: s["attributes"]["turn.number"])
    assert [t["attributes"]["turn.number"] for t in turns] == [1, 2]
    session_id = conversation["attributes"]["session.id"]
    for turn in turns:
        assert turn["parent_id"] == conversation["context"]["span_id"]
        assert turn["attributes"]["session.id"] == session_id
        assert turn["attributes"]["conversation.id"] == session_id
        children = [s for s in run.spans if s.get("parent_id") == turn["context"]["span_id"]]
        names = {s["name"] for s in children}
        assert {"stt", "llm", "tts", "tool"} <= names, names
        # The tool call's answer is part of the turn: it does not end before it.
        last_child_end = max(_seconds(s["end_time"]) for s in children)
        assert _seconds(turn["end_time"]) >= last_child_end - 0.05
    assert _seconds(turns[0]["end_time"]) <= _seconds(turns[1]["start_time"])
    # Nothing orphaned: every span's parent is in the trace, one root.
    roots = [s for s in run.spans if not s.get("parent_id")]
    assert roots == [conversation]
    assert all(s["parent_id"] in spans for s in run.spans if s.get("parent_id"))
    (tool,) = [
        s for s in _by_name(run.spans, "tool") if s["parent_id"] == turns[0]["context"]["span_id"]
    ]
    assert tool["attributes"]["gen_ai.tool.name"] == "time_in_city"
    assert tool["attributes"]["voice_lab.tool.ok"] is True


def test_ttfb_attributes_agree_with_the_dashboard(run: Run):
    final = _dashboard(run.events)
    turns = {
        s["context"]["span_id"]: s["attributes"]["turn.number"] for s in _by_name(run.spans, "turn")
    }
    compared = 0
    for span in run.spans:
        ttfb = (span.get("attributes") or {}).get("metrics.ttfb")
        if span["name"] not in ("stt", "llm", "tts") or ttfb is None:
            continue
        number = turns[span["parent_id"]]
        shown = [p.seconds for p in final.ttfb if p.turn == number and p.stage == span["name"]]
        assert any(abs(ttfb - s) <= TTFB_TOLERANCE for s in shown), (span["name"], ttfb, shown)
        compared += 1
    for point in final.ttfb:
        if point.interrupted:
            continue
        (turn,) = [
            s for s in _by_name(run.spans, "turn") if s["attributes"]["turn.number"] == point.turn
        ]
        ours = turn["attributes"][f"voice_lab.ttfb.{point.stage}_seconds"]
        assert any(abs(point.seconds - v) <= TTFB_TOLERANCE for v in ours)
    assert compared >= 5, "too few service spans carried a TTFB"
    for entry in final.latency:
        (turn,) = [
            s for s in _by_name(run.spans, "turn") if s["attributes"]["turn.number"] == entry.turn
        ]
        assert abs(turn["attributes"]["voice_lab.voice_to_voice_seconds"] - entry.seconds) < 1e-6


def test_no_content_and_no_key_left_the_process(run: Run):
    traced = json.dumps(run.spans)
    downloaded = json.dumps(run.download)
    everything_phoenix = json.dumps(run.phoenix.spans())
    labels = json.dumps(run.prometheus.query('{__name__=~"voice_lab_.+"}'))
    for where, text in (
        ("Phoenix", everything_phoenix),
        ("the download", downloaded),
        ("/metrics", run.metrics_text),
        ("Prometheus' labels", labels),
    ):
        for source, keys in run.canaries.items():
            for provider, key in keys.items():
                assert leaked(key, text) is None, f"the {source} {provider} key reached {where}"
    # What the user said and the bot answered stays out by default (VOICE_LAB_TRACE_CONTENT).
    for text in (traced, downloaded):
        assert "madrid" not in text.lower()
    assert "metrics.ttfb" in traced and "gen_ai.usage.output_tokens" in traced


def test_the_download_is_the_trace_phoenix_got_and_phoenix_ingests_it(run: Run):
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    assert run.download is not None
    downloaded = [
        span
        for resource in run.download["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    # Downloaded mid-session: the spans still open then (the conversation, the last
    # turn) are in it too, closed as of the download, under their own ids.
    assert {s["traceId"] for s in downloaded} == {run.trace_id}
    assert {s["spanId"] for s in downloaded} == {s["context"]["span_id"] for s in run.spans}
    # Into Phoenix again, as a project of its own: OTLP/JSON's hex ids back to
    # protobuf's bytes (new ones, so they are not the spans Phoenix holds already).
    for span in downloaded:
        for key in ("traceId", "spanId", "parentSpanId"):
            if span.get(key):
                span[key] = base64.b64encode(_renamed(span[key])).decode()
    for resource in run.download["resourceSpans"]:
        resource["resource"]["attributes"].append(
            {"key": "openinference.project.name", "value": {"stringValue": "downloaded"}}
        )
    body = ParseDict(run.download, ExportTraceServiceRequest()).SerializeToString()
    assert run.phoenix.post_otlp(body) == 200
    deadline = time.monotonic() + 30
    while len(again := run.phoenix.spans(project="downloaded")) < len(downloaded):
        assert time.monotonic() < deadline, "Phoenix did not take the downloaded trace"
        time.sleep(0.5)
    assert {s["name"] for s in again} == {s["name"] for s in run.spans}
    roots = [s for s in again if not s.get("parent_id")]
    assert [s["name"] for s in roots] == ["conversation"]


def _renamed(hex_id: str) -> bytes:
    return hashlib.sha256(hex_id.encode()).digest()[: len(hex_id) // 2]


def test_prometheus_scrapes_two_turns_and_a_p50_that_agrees_with_the_dashboard(run: Run):
    prometheus = run.prometheus
    count = 'sum(voice_lab_voice_to_voice_seconds_count{job="voice-lab"})'
    assert prometheus.wait_for(count, lambda v: v == 2) == 2
    final = _dashboard(run.events)
    shown = state.percentile([e.seconds for e in final.latency], 50)
    p50 = prometheus.value(
        "histogram_quantile(0.5, sum by (le, stt, llm, tts) "
        '(voice_lab_voice_to_voice_seconds_bucket{job="voice-lab"}))'
    )
    upper = next(b for b in LATENCY_BUCKETS if shown <= b)
    lower = max([0.0, *(b for b in LATENCY_BUCKETS if b < upper)])
    assert lower <= p50 <= upper, (p50, shown)
    (series,) = prometheus.query('voice_lab_voice_to_voice_seconds_count{job="voice-lab"}')
    stack = final.latency[-1].providers
    assert (series["metric"]["stt"], series["metric"]["llm"], series["metric"]["tts"]) == (
        stack.stt,
        stack.llm,
        stack.tts,
    )
    assert prometheus.value('sum(voice_lab_turns_total{job="voice-lab"})') == 2
    assert prometheus.value('sum(voice_lab_tool_calls_total{job="voice-lab",outcome="ok"})') == 2


def test_metrics_need_the_token(run: Run):
    assert run.metrics_status == {"none": 401, "wrong": 401, "right": 200}
    assert run.prometheus.value('up{job="voice-lab"}') == 1
    assert run.prometheus.value('up{job="voice-lab-no-token"}') == 0
