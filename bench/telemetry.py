"""What watching sessions from outside costs them: ``python -m bench telemetry``.

The WebRTC scenario (:mod:`bench.webrtc`: aiortc visitors asking spoken
questions of ``python app.py``) runs once per variant:

- ``off``: no tracing at all (``VOICE_LAB_TRACE_DOWNLOAD=0``, no OTLP endpoint);
- ``download``: the default, each session's spans kept in memory for "Download trace";
- ``otlp``: spans also exported over OTLP/HTTP to Arize Phoenix on loopback
  (skipped, and said so, when Phoenix is not installed: ``.venv-phoenix``);
- ``scraped``: the default with ``/metrics`` fetched every second while the visitors talk.

Per variant: voice-to-voice as the client hears it and as the server measured
it, the app's CPU seconds per session and per turn, and each scrape's time.
Then start-up (launch to HTTP 200) without an endpoint and with one. The
variants run one after another on a shared machine: compare them on a quiet
one, and look at the load each was measured under.

Those differences are small next to the noise of whole sessions, so the cost
is also measured where it is paid, in this process and without the noise:
``observe`` microseconds per event (every event of every session passes
through :class:`pipeline.telemetry.SessionTelemetry`), with tracing off and on,
and per turn of a typical event mix; and what a finished span costs to scrub
and keep. Nothing of it runs per audio frame.
"""

from __future__ import annotations

import contextlib
import os
import time

from bench.webrtc import measure_app_startup, run_webrtc_scenario
from pipeline import events as ev

OFF = {"VOICE_LAB_TRACE_DOWNLOAD": "0"}
SCRAPE_EVERY_SECS = 1.0


def typical_turn(t: float) -> list[ev.Event]:
    """The events of one turn as a session reports them: a 30-token reply in 3 sentences."""
    stack = ("Groq whisper-large-v3-turbo", "Groq llama-3.1-8b-instant", "Local piper-joe-medium")
    events: list[ev.Event] = [
        ev.ProvidersChanged(t, *stack),
        ev.UserStartedSpeaking(t + 0.1),
        *(ev.UserTranscript(t + 0.2 + i / 10, "what is the", final=False) for i in range(3)),
        ev.StageSpan(t + 1.0, "user", t, t + 0.9, "speech"),
        ev.StageSpan(t + 1.0, "vad", t + 0.9, t + 1.0, "silence"),
        ev.ServiceTTFB(t + 1.1, "stt", "STT#0", "whisper", 0.2),
        ev.UserTranscript(t + 1.1, "what is the capital of France"),
        ev.UserStoppedSpeaking(t + 1.2),
        ev.UserTurnText(t + 1.2, "what is the capital of France"),
        ev.BotThinking(t + 1.2),
        ev.ServiceTTFB(t + 1.3, "llm", "LLM#0", "llama", 0.1),
        *(ev.BotToken(t + 1.3 + i / 100, "word ") for i in range(30)),
        ev.ServiceTTFB(t + 1.5, "tts", "TTS#0", "piper", 0.1),
        ev.BotStartedSpeaking(t + 1.5),
        ev.LatencyMeasured(t + 1.5, 0.5, (("transcription", 0.2), ("LLM inference", 0.1))),
        *(ev.BotSentenceStarted(t + 1.5 + i, "A sentence.") for i in range(3)),
        *(ev.BotSpoken(t + 2.4 + i, "A sentence.") for i in range(3)),
        ev.UsageAmount(t + 1.6, "llm_input_tokens", 120),
        ev.UsageAmount(t + 1.6, "llm_output_tokens", 30),
        ev.UsageAmount(t + 1.6, "tts_characters", 90),
        ev.BotStoppedSpeaking(t + 4.5),
        ev.BotTurnText(t + 4.5, "A sentence. A sentence. A sentence."),
    ]
    return events


def observe_costs(turns: int = 300) -> dict:
    """Microseconds per event and per turn through a session's telemetry, tracing off and on."""
    from opentelemetry.sdk.trace import TracerProvider

    from pipeline.telemetry import SessionTelemetry, tracing
    from pipeline.telemetry.spans import SessionTrace

    script = [event for i in range(turns) for event in typical_turn(10.0 * i)]
    costs = {}
    for name in ("tracing_off", "tracing_on"):
        telemetry = SessionTelemetry()
        if name == "tracing_on":
            provider = TracerProvider()
            sessions = tracing.SessionSpans()
            provider.add_span_processor(tracing.Scrubber([sessions], keep_content=False))
            setup = tracing.Tracing(provider.get_tracer("bench"), sessions, False, False)
            telemetry.trace = SessionTrace(telemetry.session_id, telemetry.view, setup)
            telemetry.trace.start(0.0)
        started = time.perf_counter()
        for event in script:
            telemetry.observe(event)
        seconds = time.perf_counter() - started
        costs[name] = {
            "us_per_event": seconds / len(script) * 1e6,
            "us_per_turn": seconds / turns * 1e6,
            "events_per_turn": len(script) / turns,
        }
    return costs


def _figures(run: dict) -> dict:
    sessions = max(1, run["sessions"])
    answered = run["voice_to_voice_client"]["n"]
    app_cpu = run["cpu"]["app_seconds"]
    return {
        "voice_to_voice_client": run["voice_to_voice_client"],
        "server_v2v": run["server_v2v"],
        "unanswered_turns": run["unanswered_turns"],
        "app_cpu_seconds_per_session": None if app_cpu is None else app_cpu / sessions,
        "app_cpu_seconds_per_turn": None if app_cpu is None or not answered else app_cpu / answered,
        "talk_wall_seconds": run["cpu"]["wall_seconds"],
        "scrapes": run["scrapes"],
        "loadavg": [run["machine"]["loadavg_before"][0], run["machine"]["loadavg_after"][0]],
        "app_log": run["app_log"],
    }


@contextlib.contextmanager
def _phoenix():
    """Phoenix on loopback, or None (with why) when it is not installed."""
    from testkit.receivers import Phoenix, phoenix_executable

    try:
        phoenix_executable()
    except RuntimeError as e:
        yield None, str(e)
        return
    with Phoenix() as phoenix:
        yield phoenix, None


async def run_telemetry_cost(profile: str, sessions: int, turns: int) -> dict:
    result: dict = {"profile": profile, "sessions": sessions, "turns": turns, "variants": {}}
    result["loadavg_before"] = os.getloadavg()
    result["observe"] = observe_costs()
    with _phoenix() as (phoenix, missing):
        otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.endpoint} if phoenix else None
        variants = [
            ("off", OFF, None),
            ("download", {}, None),
            ("otlp", otlp, None),
            ("scraped", {}, SCRAPE_EVERY_SECS),
        ]
        for name, env, scrape in variants:
            if env is None:
                result["variants"][name] = {"skipped": missing}
                continue
            run = await run_webrtc_scenario(
                profile, sessions, turns, extra_env=env, scrape_every=scrape
            )
            result["variants"][name] = _figures(run)
        endpoint = phoenix.endpoint if phoenix else "http://127.0.0.1:9"
        result["startup"] = {
            "no_endpoint": await measure_app_startup(OFF),
            "endpoint": await measure_app_startup({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}),
        }
    result["loadavg_after"] = os.getloadavg()
    return result


def format_telemetry(result: dict) -> str:
    def ms(value) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    lines = [
        f"telemetry cost, {result['profile']}: {result['sessions']} session(s) x "
        f"{result['turns']} turn(s) per variant",
        f"{'variant':<10} {'V2V client p50/p95 ms':>22} {'server p50/p95 ms':>18} "
        f"{'CPU s/session':>14} {'CPU s/turn':>11} {'scrape ms':>10} {'load':>10}",
    ]
    for name, v in result["variants"].items():
        if "skipped" in v:
            lines.append(f"{name:<10} skipped: {v['skipped']}")
            continue
        client, server = v["voice_to_voice_client"], v["server_v2v"]
        cpu_session, cpu_turn = v["app_cpu_seconds_per_session"], v["app_cpu_seconds_per_turn"]
        scrape = ms(v["scrapes"]["median"]) if v["scrapes"] else "-"
        lines.append(
            f"{name:<10} {ms(client['median']) + ' / ' + ms(client['p95']):>22} "
            f"{ms(server['median']) + ' / ' + ms(server['p95']):>18} "
            f"{'-' if cpu_session is None else f'{cpu_session:.2f}':>14} "
            f"{'-' if cpu_turn is None else f'{cpu_turn:.2f}':>11} {scrape:>10} "
            f"{v['loadavg'][0]:>4.1f}-{v['loadavg'][1]:<4.1f}"
        )
    for name, cost in result["observe"].items():
        lines.append(
            f"observe ({name}): {cost['us_per_event']:.1f} us per event, "
            f"{cost['us_per_turn']:.0f} us per turn of {cost['events_per_turn']:.0f} events"
        )
    for name, startup in result["startup"].items():
        lines.append(
            f"start-up ({name}): HTTP 200 after {startup['http_ready_seconds']:.1f} s "
            f"(models ready {startup['models_ready_seconds'] or 0:.1f} s)"
        )
    return "\n".join(lines)
