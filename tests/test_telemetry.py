"""Metrics and spans from a session's events: they agree with the dashboard, and leak nothing.

A scripted session (a local turn, a switch to cloud providers, a turn with a
speculation and two tool calls, a barge-in, a cough, a last turn with an
error naming a key) is folded by the dashboard's reducer and by
:class:`pipeline.telemetry.SessionTelemetry` side by side; the spans go to an
in-memory store of their own (no global tracer provider), the metrics to the
process's registry, read as differences. The real pipeline's spans are checked
at the end, with the local models, across a provider switch.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import deque
from dataclasses import replace

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline import events as ev
from pipeline.providers.base import ProviderKeys
from pipeline.telemetry import SessionTelemetry, metrics, tracing
from pipeline.telemetry.spans import SessionTrace
from pipeline.telemetry.view import DashboardView
from tests.test_no_keys_in_logs import groq_canary, leaked, plain_canary
from ui import cost, observability, state
from ui.state import percentile

LOCAL = ("Local whisper-tiny.en", "Local SmolLM2-135M-Instruct", "Local piper-joe-medium")
CLOUD = ("Groq whisper-large-v3-turbo", "Groq llama-3.1-8b-instant", "ElevenLabs eleven_flash_v2_5")
BREAKDOWN = (("endpointing wait", 0.2), ("transcription", 0.3))


def ttfb(t: float, stage: str, seconds: float) -> ev.ServiceTTFB:
    return ev.ServiceTTFB(t, stage, f"Service{stage.upper()}#0", "model", seconds)


def scripted_session(error_key: str = "gsk_" + "x" * 40) -> list[ev.Event]:
    return [
        ev.SessionStarted(0.0, "s-1"),
        ev.ProvidersChanged(0.0, *LOCAL),
        # Turn 1, on the local models.
        ev.UserStartedSpeaking(1.1),
        ev.StageSpan(1.9, "user", 0.9, 1.7, "speech"),
        ttfb(2.0, "stt", 0.35),
        ev.UserStoppedSpeaking(2.1),
        ev.UserTurnText(2.1, "Hello there"),
        ev.BotThinking(2.2),
        ttfb(2.3, "llm", 0.1),
        ev.BotToken(2.3, "Hi "),
        ttfb(2.4, "tts", 0.09),
        ev.BotStartedSpeaking(2.4),
        ev.LatencyMeasured(2.4, 0.7, BREAKDOWN),
        ev.UsageAmount(2.5, "llm_input_tokens", 40),
        ev.HeardLatency(2.6, "reply", 950.0),
        ev.OutputGap(3.0, 0.05),
        ev.BotStoppedSpeaking(4.0),
        ev.BotTurnText(4.0, "Hi there"),
        # A switch between turns.
        ev.ProvidersChanged(5.0, *CLOUD),
        # Turn 2: speculated, two tool calls (one fails), then a barge-in.
        ev.UserStartedSpeaking(6.1),
        ev.StageSpan(6.9, "user", 5.9, 6.8, "speech"),
        ev.SpeculationStarted(7.0, "What time is it in Madrid"),
        ttfb(7.1, "stt", 0.2),
        ev.UserStoppedSpeaking(7.2),
        ev.UserTurnText(7.2, "What time is it in Madrid?"),
        ev.SpeculationEnded(7.2, True, "confirmed", 0, 0, 150.0),
        ev.BotThinking(7.3),
        ttfb(7.35, "llm", 0.08),
        ev.ToolCallStarted(7.4, "call-1", "time_in_city", '{"city": "Madrid"}'),
        ev.ToolCallFinished(7.5, "call-1", "time_in_city", True, "In Madrid it is noon."),
        ev.ToolCallStarted(7.5, "call-2", "cancel_order", '{"order_number": "1"}'),
        ev.ToolCallFinished(7.6, "call-2", "cancel_order", False, "Sorry, I couldn't."),
        ev.BotToken(7.7, "In Madrid "),
        ttfb(7.8, "tts", 0.12),
        ev.BotStartedSpeaking(7.8),
        ev.LatencyMeasured(7.8, 0.6, BREAKDOWN),
        ev.UsageAmount(7.9, "llm_input_tokens", 100),
        ev.UsageAmount(7.9, "llm_output_tokens", 12),
        ev.UsageAmount(7.9, "tts_characters", 30),
        ev.UserStartedSpeaking(9.0),
        ev.Interrupted(9.0),
        ttfb(9.05, "tts", 0.5),  # for the reply just cut off: out of the figures
        ev.BotStoppedSpeaking(9.2),
        ev.BotTurnText(9.2, "In Madrid it", interrupted=True),
        ev.HeardLatency(9.4, "barge-in", 300.0),
        # ...which was a cough: no words, no turn.
        ev.StageSpan(9.5, "user", 8.8, 9.3, "speech"),
        ev.UserStoppedSpeaking(9.6),
        # Turn 3.
        ev.UserStartedSpeaking(10.5),
        ev.StageSpan(11.2, "user", 10.3, 11.0, "speech"),
        ttfb(11.3, "stt", 0.25),
        ev.UserStoppedSpeaking(11.4),
        ev.UserTurnText(11.4, "Thanks"),
        ev.BotThinking(11.5),
        ttfb(11.6, "llm", 0.07),
        ev.BotToken(11.6, "You're welcome"),
        ev.BotStartedSpeaking(11.8),
        ev.LatencyMeasured(11.8, 0.4, BREAKDOWN),
        ev.ErrorReported(12.0, f"ElevenLabs refused the key {error_key}"),
        ev.BotStoppedSpeaking(12.5),
        ev.BotTurnText(12.5, "You're welcome"),
        # Turn 4, spoken over while its reply is being prepared; turn 5.
        ev.UserStartedSpeaking(13.0),
        ev.UserStoppedSpeaking(13.5),
        ev.UserTurnText(13.5, "One more thing"),
        ev.BotThinking(13.6),
        ev.UserStartedSpeaking(13.8),
        ttfb(13.9, "llm", 0.3),  # the dropped reply's: out of the figures
        ev.UserStoppedSpeaking(14.2),
        ev.UserTurnText(14.2, "never mind"),
        ev.BotThinking(14.3),
        ttfb(14.4, "llm", 0.06),
        ev.BotStartedSpeaking(14.5),
        ev.LatencyMeasured(14.5, 0.5, BREAKDOWN),
        ev.BotStoppedSpeaking(15.0),
        ev.BotTurnText(15.0, "OK"),
        ev.SessionEnded(20.0, "client disconnected"),
    ]


def fold_dashboard(events: list[ev.Event]) -> state.SessionState:
    current = state.initial_state()
    for event in events:
        current = state.reduce(current, event)
    return current


def traced(events: list[ev.Event], keep_content: bool = False):
    """The events through a session's telemetry, its spans kept in a store of the test's own."""
    provider = TracerProvider()
    sessions = tracing.SessionSpans()
    provider.add_span_processor(tracing.Scrubber([sessions], keep_content))
    setup = tracing.Tracing(provider.get_tracer("test"), sessions, keep_content, False)
    telemetry = SessionTelemetry("s-1")
    telemetry.trace = SessionTrace(telemetry.session_id, telemetry.view, setup)
    telemetry.trace.start(t=0.0)
    for event in events:
        telemetry.observe(event)
    return telemetry, list(telemetry.trace.spans)


def secs(ns: int) -> float:
    return ns / 1e9


# --------------------------------------------------------------------------- the dashboard's view


def test_the_view_files_every_figure_where_the_dashboard_does():
    view, current = DashboardView(), state.initial_state()
    for event in scripted_session():
        before = current
        current = state.reduce(current, event)
        if isinstance(event, ev.ServiceTTFB):
            share = view.ttfb_share(event)
            point = current.ttfb[-1]
            assert (share.turn, share.interrupted) == (point.turn, point.interrupted), event
        if isinstance(event, ev.LatencyMeasured):
            assert current.latency[-1].turn == view.turns
        stop = view.barge_in_stop(event)
        grew = len(current.server_barge_ins) > len(before.server_barge_ins)
        assert grew == (stop is not None)
        if grew:
            assert current.server_barge_ins[-1].seconds == stop
        view.fold(event)
        assert view.turns == current.user_turns
        assert view.speaking == (current.status == "speaking")
        logs = current.turn_logs
        assert view.usage_stack == (logs.current.stack if logs.current else view.usage_stack)
    assert current.server_barge_ins and any(p.interrupted for p in current.ttfb)


# --------------------------------------------------------------------------- spans


def test_spans_nest_under_the_dashboards_turns_and_none_is_left_open():
    events = scripted_session()
    telemetry, spans = traced(events)
    final = fold_dashboard(events)
    by_id = {s.context.span_id: s for s in spans}
    (conversation,) = [s for s in spans if s.name == "conversation"]
    turns = sorted((s for s in spans if s.name == "turn"), key=lambda s: s.start_time)
    assert [t.attributes["turn.number"] for t in turns] == [1, 2, 3, 3, 4, 5]
    committed = [t.attributes["voice_lab.turn.committed"] for t in turns]
    assert committed == [True, True, False, True, True, True]
    assert all(t.parent.span_id == conversation.context.span_id for t in turns)
    assert {t.attributes["session.id"] for t in turns} == {"s-1"}

    def children(turn, name):
        return [s for s in spans if s.name == name and s.parent.span_id == turn.context.span_id]

    # A turn ends at its last activity: not when the next starts, nor early.
    assert secs(turns[0].end_time) == pytest.approx(4.0)
    assert secs(turns[1].end_time) == pytest.approx(9.2)  # the barge-in's stop
    assert turns[1].attributes["turn.was_interrupted"] is True
    assert secs(turns[3].end_time) == pytest.approx(12.5)
    assert secs(turns[4].end_time) == pytest.approx(13.8)  # its reply dropped there
    assert turns[4].attributes["turn.was_interrupted"] is True
    (barge_in,) = children(turns[1], "barge-in")
    assert barge_in.attributes["voice_lab.barge_in.stop_seconds"] == pytest.approx(
        final.server_barge_ins[0].seconds
    )
    ok, failed = sorted(children(turns[1], "tool"), key=lambda s: s.start_time)
    assert ok.attributes["gen_ai.tool.name"] == "time_in_city" and ok.status.is_ok
    assert failed.attributes["voice_lab.tool.ok"] is False and not failed.status.is_ok
    (speculation,) = children(turns[1], "speculation")
    assert speculation.attributes["voice_lab.speculation.outcome"] == "adopted"
    (reply,) = children(turns[0], "heard")
    assert secs(reply.start_time) == pytest.approx(1.7)  # the voice's end
    assert secs(reply.end_time - reply.start_time) == pytest.approx(0.95)
    (heard_barge_in,) = children(turns[1], "heard")
    assert heard_barge_in.attributes["voice_lab.heard.measure"] == "barge-in"
    # The figures the dashboard shows, on the turns it shows them for.
    for entry in final.latency:
        (turn,) = [
            t
            for t in turns
            if t.attributes["turn.number"] == entry.turn
            and t.attributes["voice_lab.turn.committed"]
        ]
        assert turn.attributes["voice_lab.voice_to_voice_seconds"] == entry.seconds
    assert turns[1].attributes["voice_lab.ttfb.tts_interrupted_seconds"] == (0.5,)
    assert turns[1].attributes["voice_lab.stack.llm"] == CLOUD[1]
    # Nothing open, nothing orphaned.
    assert telemetry.trace.open_spans() == []
    assert all(s.end_time is not None for s in spans)
    assert all(s.parent is None or s.parent.span_id in by_id for s in spans)
    assert [s.name for s in spans if s.parent is None] == ["conversation"]
    assert [e.name for e in conversation.events] == ["providers", "providers"]


def test_content_stays_out_unless_asked_for_and_keys_never_get_in(monkeypatch):
    typed = plain_canary()
    ProviderKeys({"groq": typed})  # remembered for masking, as a visitor's typed key is
    shaped = groq_canary()  # masked for its shape alone
    for key in (typed, shaped):
        _, spans = traced(scripted_session(error_key=key), keep_content=True)
        text = json.dumps(tracing.otlp_json(spans))
        assert leaked(key, text) is None
        assert "ElevenLabs refused the key ***" in text
    assert "Madrid" in text and "Hello there" in text  # kept when asked for
    _, spans = traced(scripted_session())
    text = json.dumps(tracing.otlp_json(spans))
    for said in ("Madrid", "Hello there", "welcome"):
        assert said not in text
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"deployment.environment=lab,oops={shaped}")
    monkeypatch.setenv("VOICE_LAB_WORKER_ID", "w2")
    resource = tracing._resource()
    assert (
        resource.attributes["oops"] == "***" and resource.attributes["voice_lab.worker.id"] == "w2"
    )
    assert resource.attributes["service.name"] == "voice-lab"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "lab-eu")
    assert tracing._resource().attributes["service.name"] == "lab-eu"


def test_the_download_is_otlp_json_that_the_otlp_schema_reads_back():
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    _, spans = traced(scripted_session())
    data = json.loads(json.dumps(tracing.otlp_json(spans)))
    found = [s for r in data["resourceSpans"] for sc in r["scopeSpans"] for s in sc["spans"]]
    assert len(found) == len(spans)
    assert all(len(s["traceId"]) == 32 and len(s["spanId"]) == 16 for s in found)
    assert int(found[0]["traceId"], 16) == spans[0].context.trace_id
    for span in found:
        for key in ("traceId", "spanId", "parentSpanId"):
            if span.get(key):
                span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    request = ParseDict(data, ExportTraceServiceRequest())
    names = [s.name for r in request.resource_spans for sc in r.scope_spans for s in sc.spans]
    assert sorted(names) == sorted(s.name for s in spans)
    assert set(names) == {"conversation", "turn", "tool", "speculation", "barge-in", "heard"}


# --------------------------------------------------------------------------- metrics


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stack(labels: tuple[str, str, str]) -> dict[str, str]:
    return dict(zip(("stt", "llm", "tts"), labels, strict=True))


def test_metrics_count_what_the_dashboard_shows_per_stack():
    events = scripted_session()
    final = fold_dashboard(events)
    local, cloud = stack(LOCAL), stack(CLOUD)
    names = {
        "v2v_local": ("voice_lab_voice_to_voice_seconds_count", local),
        "v2v_cloud": ("voice_lab_voice_to_voice_seconds_count", cloud),
        "v2v_sum": ("voice_lab_voice_to_voice_seconds_sum", cloud),
        "turns_cloud": ("voice_lab_turns_total", cloud),
        "stt_ttfb": ("voice_lab_ttfb_seconds_count", {"stage": "stt", "service": CLOUD[0]}),
        "tts_ttfb": ("voice_lab_ttfb_seconds_count", {"stage": "tts", "service": CLOUD[2]}),
        "llm_ttfb": ("voice_lab_ttfb_seconds_count", {"stage": "llm", "service": CLOUD[1]}),
        "barge_in": ("voice_lab_barge_in_stop_seconds_count", cloud),
        "heard_reply": ("voice_lab_heard_latency_seconds_count", {"measure": "reply", **local}),
        "gaps": ("voice_lab_output_underruns_total", local),
        "speculated": ("voice_lab_speculations_started_total", cloud),
        "adopted": (
            "voice_lab_speculations_ended_total",
            {"outcome": "adopted", "reason": "confirmed", **cloud},
        ),
        "tool_ok": ("voice_lab_tool_calls_total", {"tool": "time_in_city", "outcome": "ok"}),
        "tool_failed": (
            "voice_lab_tool_calls_total",
            {"tool": "cancel_order", "outcome": "failed"},
        ),
        "dollars": ("voice_lab_cost_dollars_total", cloud),
        "active": ("voice_lab_sessions_active", {}),
        "started": ("voice_lab_sessions_started_total", {}),
    }
    before = {k: sample(n, **labels) for k, (n, labels) in names.items()}
    telemetry = SessionTelemetry()
    active = []
    for event in events:
        telemetry.observe(event)
        active.append(sample("voice_lab_sessions_active") - before["active"])
    delta = {k: sample(n, **labels) - before[k] for k, (n, labels) in names.items()}

    assert delta["v2v_local"] == 1 and delta["v2v_cloud"] == 3
    assert delta["v2v_sum"] == pytest.approx(0.6 + 0.4 + 0.5)
    assert delta["turns_cloud"] == 4
    shown = [p for p in final.ttfb if p.stage == "llm" and not p.interrupted and p.turn >= 2]
    assert delta["llm_ttfb"] == len(shown) == 3
    shown = [p for p in final.ttfb if p.stage == "tts" and not p.interrupted and p.turn >= 2]
    assert delta["tts_ttfb"] == len(shown) == 1  # the cut-off reply's is left out
    assert delta["stt_ttfb"] == 2
    assert delta["barge_in"] == len(final.server_barge_ins) == 1
    assert delta["heard_reply"] == 1 and delta["gaps"] == 1
    assert delta["speculated"] == 1 and delta["adopted"] == 1
    assert delta["tool_ok"] == 1 and delta["tool_failed"] == 1
    # Priced as the cost panel prices it, the speech-time STT included once the session ends.
    assert delta["dollars"] == pytest.approx(cost.session_cost(final), rel=1e-9)
    assert delta["dollars"] > 0
    assert max(active) == 1 and active[-1] == 0 and delta["started"] == 1


def test_a_label_is_only_ever_a_known_model():
    key = groq_canary()
    assert metrics.stage_label("llm", "Groq llama-3.1-8b-instant") == "Groq llama-3.1-8b-instant"
    assert metrics.stage_label("llm", "Groq my-fine-tune") == "Groq other"
    assert metrics.stage_label("llm", f"Groq {key}") == "Groq other"
    assert metrics.stage_label("tts", f"{key} model") == "other"
    telemetry = SessionTelemetry()
    for event in scripted_session():
        if isinstance(event, ev.ProvidersChanged):
            event = replace(event, llm=f"Groq {key}")
        telemetry.observe(event)
    from prometheus_client import generate_latest

    assert leaked(key, generate_latest(REGISTRY).decode()) is None


def test_metrics_answer_only_with_the_token_when_one_is_set(monkeypatch):
    client = TestClient(Starlette(routes=[observability.METRICS_ROUTE]))
    monkeypatch.delenv("VOICE_LAB_METRICS_TOKEN", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert client.get("/metrics").status_code == 200
    monkeypatch.setenv("SPACE_ID", "someone/voice-lab")
    assert client.get("/metrics").status_code == 404  # a public Space without a token
    monkeypatch.setenv("VOICE_LAB_METRICS_TOKEN", "s3cret-token")
    assert client.get("/metrics").status_code == 401
    refused = client.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert (
        client.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
    )
    answer = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert "voice_lab_sessions_active" in answer.text and "s3cret" not in answer.text


# --------------------------------------------------------------------------- start-up


STARTUP = """
import json, sys, time
started = time.perf_counter()
from pipeline.runtime import prepare_runtime  # what app.py imports before serving
from ui.layout import build_ui
build_ui()
from opentelemetry import trace
found = {
    "seconds": time.perf_counter() - started,
    "provider": type(trace.get_tracer_provider()).__name__,
    "modules": sorted(m for m in sys.modules if m.startswith(("pipeline.telemetry.tracing",
        "pipeline.telemetry.spans", "opentelemetry.exporter", "google.protobuf"))),
}
from pipeline.telemetry import SessionTelemetry
SessionTelemetry().start()  # a session starts: tracing is set up now, for Download trace
from pipeline.telemetry.tracing import tracing
found["after_session"] = sorted(m for m in sys.modules if m.startswith("opentelemetry.exporter"))
found["exporting"] = tracing().exporting
print(json.dumps(found))
"""


@pytest.mark.slow
def test_without_an_endpoint_nothing_is_imported_at_start_nor_exported_later():
    from testkit.app import ROOT, app_environment, free_port

    env = app_environment(free_port())
    for name in [n for n in env if n.startswith("OTEL_")]:
        env.pop(name)
    run = subprocess.run(
        [sys.executable, "-c", STARTUP], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["provider"] == "ProxyTracerProvider", "a tracer provider was set at start"
    assert found["modules"] == [], found["modules"]
    assert found["after_session"] == [] and found["exporting"] is False


# --------------------------------------------------------------------------- the real pipeline


@pytest.mark.slow
async def test_a_provider_switch_continues_the_conversation_and_local_services_trace(models):
    from testkit.driver import SessionDriver
    from testkit.speech import speech_pcm
    from tests.test_providers import config, session_with

    session = session_with(models, config())
    async with SessionDriver(session) as d:
        for number, question in enumerate(("What is the capital of France?", "And Germany?"), 1):
            await d.play(speech_pcm(question))
            await d.play_silence_until(lambda n=number: len(d.events("BotTurnText")) >= n, 45)
            if number == 1:  # a new generation between the turns
                d.session.request_config(replace(config(), vad_stop_secs=0.25))
                await d.play_silence_until(lambda: len(d.events("ProvidersChanged")) == 2, 15)
        final = d.session.snapshot()
    spans = list(session.telemetry.trace.spans)
    by_id = {s.context.span_id: s for s in spans}
    (conversation,) = [s for s in spans if s.name == "conversation"]
    turns = sorted((s for s in spans if s.name == "turn"), key=lambda s: s.start_time)
    assert [t.attributes["turn.number"] for t in turns] == [1, 2]
    assert {t.parent.span_id for t in turns} == {conversation.context.span_id}
    for turn in turns:
        number = turn.attributes["turn.number"]
        children = [s for s in spans if s.parent and s.parent.span_id == turn.context.span_id]
        assert {"stt", "llm", "tts"} <= {s.name for s in children}
        for child in children:
            if "metrics.ttfb" in child.attributes:
                shown = [
                    p.seconds for p in final.ttfb if p.turn == number and p.stage == child.name
                ]
                assert child.attributes["metrics.ttfb"] in shown
    assert all(s.parent is None or s.parent.span_id in by_id for s in spans)
    assert session.telemetry.trace.open_spans() == []
    assert percentile([e.seconds for e in final.latency], 50) is not None


def test_the_cost_benchmark_measures_observe_and_reports_every_variant():
    from bench.telemetry import format_telemetry, observe_costs

    costs = observe_costs(turns=20)
    assert all(
        cost["us_per_event"] > 0 and cost["events_per_turn"] == 57 for cost in costs.values()
    )
    variant = {
        "voice_to_voice_client": {"median": 0.9, "p95": 1.2},
        "server_v2v": {"median": 0.8, "p95": 1.1},
        "app_cpu_seconds_per_session": 4.0,
        "app_cpu_seconds_per_turn": 1.3,
        "scrapes": {"median": 0.004},
        "loadavg": [0.5, 0.7],
    }
    startup = {"http_ready_seconds": 12.0, "models_ready_seconds": 11.0}
    text = format_telemetry(
        {
            "profile": "local",
            "sessions": 1,
            "turns": 3,
            "variants": {"off": variant, "otlp": {"skipped": "no Phoenix"}},
            "observe": costs,
            "startup": {"no_endpoint": startup, "endpoint": startup},
        }
    )
    assert "900 / 1200" in text and "skipped: no Phoenix" in text and "us per event" in text


def test_a_barge_in_whose_stop_never_comes_closes_at_the_next_turn():
    events = [
        ev.SessionStarted(0.0, "s-1"),
        ev.UserStartedSpeaking(1.0),
        ev.UserTurnText(2.0, "Tell me a story"),
        ev.BotStartedSpeaking(3.0),
        ev.UserStartedSpeaking(4.0),  # over the bot, whose stop is never reported
        ev.UserStoppedSpeaking(4.5),
        ev.BotTurnText(4.6, "Once", interrupted=True),
        ev.UserStartedSpeaking(6.0),
        ev.SessionEnded(9.0),
    ]
    telemetry, spans = traced(events)
    first = next(s for s in spans if s.name == "turn" and s.attributes["turn.number"] == 1)
    assert secs(first.end_time) == pytest.approx(4.0)
    assert first.attributes["turn.was_interrupted"] is True
    assert telemetry.trace.open_spans() == []


def test_with_download_off_and_no_endpoint_a_session_is_not_traced(monkeypatch):
    from pipeline.session import SessionRecords

    monkeypatch.setenv("VOICE_LAB_TRACE_DOWNLOAD", "0")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    telemetry = SessionTelemetry()
    telemetry.start()
    records = SessionRecords()
    records.add("conn", deque(scripted_session()), telemetry)
    assert telemetry.trace is None and records.trace("conn") is None
    assert records.get("conn")
