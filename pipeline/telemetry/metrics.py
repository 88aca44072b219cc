"""Prometheus metrics of this worker process, counted from the sessions' events.

Each worker serves its own ``/metrics`` (``ui.observability``); Prometheus
scrapes every worker directly and sums them, so nothing here assumes one
process. Per-turn figures carry the stack as three labels, ``stt``, ``llm`` and
``tts``, each "Provider model" as the dashboard names it. A label is only ever
a provider's known model (else "Provider other"): the page lets a visitor type
any model name, and neither a key nor a visitor's id may become a label.

Latency histograms share one set of buckets, fine where voice agents live
(100 ms steps to 1 s, 200 ms to 2 s), so a Grafana panel of p50/p95 per stack
is one query::

    histogram_quantile(0.95, sum by (le, stt, llm, tts)
        (rate(voice_lab_voice_to_voice_seconds_bucket[5m])))
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram

from pipeline import events as ev
from pipeline import pricing
from pipeline.providers.base import STAGES
from pipeline.providers.registry import PROVIDERS
from pipeline.server_settings import worker_id
from pipeline.telemetry.view import DashboardView, Stack
from pipeline.tools.catalog import TOOLS

STACK = ("stt", "llm", "tts")
LATENCY_BUCKETS = (
    *(round(0.1 * i, 1) for i in range(1, 11)),
    1.2,
    1.4,
    1.6,
    1.8,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    15.0,
)
TTFB_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
)
BARGE_IN_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
# Why a session was turned away (the label's only values).
REFUSALS = (
    "capacity",
    "per_client",
    "rate_limited",
    "invalid_offer",
    "no_handshake",
    "no_audio",
    "local_models_unavailable",
)
TOOL_NAMES = frozenset(tool.schema.name for tool in TOOLS)
SPECULATION_REASONS = frozenset(
    {
        "confirmed",
        "resumed",
        "transcript changed",
        "interrupted",
        "turn ended",
        "tool call",
        "provider error",
    }
)

SESSIONS_ACTIVE = Gauge("voice_lab_sessions_active", "Sessions whose pipeline runs in this worker")
SESSIONS_STARTED = Counter("voice_lab_sessions_started", "Sessions whose pipeline started")
SESSIONS_REFUSED = Counter(
    "voice_lab_sessions_refused", "Connections turned away, by reason", ["reason"]
)
TURNS = Counter("voice_lab_turns", "User turns (the dashboard's turn count)", STACK)
VOICE_TO_VOICE = Histogram(
    "voice_lab_voice_to_voice_seconds",
    "Voice-to-voice latency: the user fell silent -> the bot's first audio out (the dashboard's)",
    STACK,
    buckets=LATENCY_BUCKETS,
)
HEARD = Histogram(
    "voice_lab_heard_latency_seconds",
    "Latency measured in the visitor's page: reply (mic quiet -> bot audible), "
    "barge-in (voice -> bot silent)",
    ["measure", *STACK],
    buckets=LATENCY_BUCKETS,
)
TTFB = Histogram(
    "voice_lab_ttfb_seconds",
    "Time to first byte of each service call (requests the user cut off left out)",
    ["stage", "service"],
    buckets=TTFB_BUCKETS,
)
UNDERRUNS = Counter(
    "voice_lab_output_underruns", "Gaps in the middle of a reply's audio (underruns)", STACK
)
UNDERRUN_SECONDS = Counter("voice_lab_output_underrun_seconds", "Seconds of those gaps", STACK)
BARGE_IN_STOP = Histogram(
    "voice_lab_barge_in_stop_seconds",
    "Barge-in: the user's voice detected over the bot -> the bot's audio stopped",
    STACK,
    buckets=BARGE_IN_BUCKETS,
)
SPECULATIONS_STARTED = Counter(
    "voice_lab_speculations_started", "Replies started before the turn was confirmed", STACK
)
SPECULATIONS_ENDED = Counter(
    "voice_lab_speculations_ended",
    "Speculations settled: adopted or discarded, and why",
    ["outcome", "reason", *STACK],
)
TOOL_CALLS = Counter(
    "voice_lab_tool_calls", "Tool calls the LLM made, by outcome (ok, failed)", ["tool", "outcome"]
)
SERVER_KEY_SECONDS = Counter(
    "voice_lab_server_key_seconds",
    "Session seconds spent on the server's own API keys, per provider",
    ["provider"],
)
COST = Counter(
    "voice_lab_cost_dollars", "Dollars spent, priced per stack as the dashboard prices it", STACK
)
WORKER = Gauge("voice_lab_worker_info", "This worker's id (VOICE_LAB_WORKER_ID)", ["worker"])
WORKER.labels(worker_id()).set(1)


@lru_cache(maxsize=64)
def _known_models(stage: str) -> dict[str, frozenset[str]]:
    """Per provider label: the models a label may name for ``stage`` (catalog and price table)."""
    known: dict[str, set[str]] = {}
    for provider in PROVIDERS.values():
        catalog = provider.catalogs.get(stage) if stage in STAGES else None
        if catalog is not None:
            known.setdefault(provider.label, set()).update(catalog.models)
    for price in pricing.PRICES:
        if pricing.STAGE_OF[price.measure] == stage:
            known.setdefault(price.provider, set()).add(price.model)
    return {label: frozenset(models) for label, models in known.items()}


@lru_cache(maxsize=512)
def stage_label(stage: str, label: str) -> str:
    """``label`` ("Groq llama-3.1-8b-instant") if it names a known model, else "Groq other"."""
    provider, model = pricing.split_label(label)
    models = _known_models(stage).get(provider)
    if models is None:
        return "other"
    return label if model in models else f"{provider} other"


def stack_labels(stack: Stack) -> tuple[str, str, str]:
    stt, llm, tts = stack
    return (stage_label("stt", stt), stage_label("llm", llm), stage_label("tts", tts))


def refused(reason: str) -> None:
    """Count a connection turned away (``reason`` one of :data:`REFUSALS`)."""
    SESSIONS_REFUSED.labels(reason if reason in REFUSALS else "other").inc()


def server_key_seconds(provider_labels: list[str], seconds: float) -> None:
    for provider in set(provider_labels):
        SERVER_KEY_SECONDS.labels(provider).inc(seconds)


class SessionMetrics:
    """One session's contribution to the metrics, from its events.

    ``view`` is the session's :class:`DashboardView`, read before it folds each
    event. Dollars are priced like the dashboard's cost panel: usage on the
    stack it was used on, and, for a stack whose speech-to-text reported no
    audio seconds, the user's speech time (added when the session ends, once
    it is known that none came).
    """

    def __init__(self, view: DashboardView):
        self._view = view
        self._started = False
        self._stt_reported: set[Stack] = set()
        self._speech_secs: dict[Stack, float] = {}
        self._handlers: dict[type, Callable] = {
            ev.SessionStarted: self._session_started,
            ev.SessionEnded: self._session_ended,
            ev.UserTurnText: self._turn,
            ev.LatencyMeasured: self._latency,
            ev.HeardLatency: self._heard,
            ev.ServiceTTFB: self._ttfb,
            ev.OutputGap: self._gap,
            ev.BotStoppedSpeaking: self._bot_stopped,
            ev.SpeculationStarted: self._speculation_started,
            ev.SpeculationEnded: self._speculation_ended,
            ev.ToolCallFinished: self._tool_finished,
            ev.UsageAmount: self._usage,
            ev.StageSpan: self._speech,
        }

    def observe(self, event: ev.Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _labels(self) -> tuple[str, str, str]:
        return stack_labels(self._view.stack or self._view.usage_stack)

    def _session_started(self, _e: ev.SessionStarted) -> None:
        if not self._started:
            self._started = True
            SESSIONS_STARTED.inc()
            SESSIONS_ACTIVE.inc()

    def _session_ended(self, _e: ev.SessionEnded) -> None:
        if self._started:
            self._started = False
            SESSIONS_ACTIVE.dec()
        for stack, seconds in self._speech_secs.items():
            if stack not in self._stt_reported and seconds > 0:
                self._charge(stack, pricing.Usage(stt_audio_secs=seconds))
        self._speech_secs.clear()

    def _turn(self, _e: ev.UserTurnText) -> None:
        TURNS.labels(*self._labels()).inc()

    def _latency(self, e: ev.LatencyMeasured) -> None:
        VOICE_TO_VOICE.labels(*self._labels()).observe(e.seconds)

    def _heard(self, e: ev.HeardLatency) -> None:
        if e.measure in ("reply", "barge-in"):
            HEARD.labels(e.measure, *self._labels()).observe(e.ms / 1000)

    def _ttfb(self, e: ev.ServiceTTFB) -> None:
        if self._view.ttfb_share(e).interrupted:
            return
        stack = self._view.stack
        label = stack[STACK.index(e.stage)] if stack and e.stage in STACK else "other"
        TTFB.labels(e.stage if e.stage in STACK else "other", stage_label(e.stage, label)).observe(
            e.seconds
        )

    def _gap(self, e: ev.OutputGap) -> None:
        labels = stack_labels(self._view.usage_stack)
        UNDERRUNS.labels(*labels).inc()
        UNDERRUN_SECONDS.labels(*labels).inc(max(0.0, e.secs))

    def _bot_stopped(self, e: ev.BotStoppedSpeaking) -> None:
        seconds = self._view.barge_in_stop(e)
        if seconds is not None:
            BARGE_IN_STOP.labels(*self._labels()).observe(seconds)

    def _speculation_started(self, _e: ev.SpeculationStarted) -> None:
        SPECULATIONS_STARTED.labels(*self._labels()).inc()

    def _speculation_ended(self, e: ev.SpeculationEnded) -> None:
        outcome = "adopted" if e.adopted else "discarded"
        reason = e.reason if e.reason in SPECULATION_REASONS else "other"
        SPECULATIONS_ENDED.labels(outcome, reason, *self._labels()).inc()

    def _tool_finished(self, e: ev.ToolCallFinished) -> None:
        tool = e.name if e.name in TOOL_NAMES else "other"
        TOOL_CALLS.labels(tool, "ok" if e.ok else "failed").inc()

    def _usage(self, e: ev.UsageAmount) -> None:
        if e.measure not in pricing.MEASURES:
            return
        stack = self._view.usage_stack
        if e.measure == "stt_audio_secs" and e.amount:
            self._stt_reported.add(stack)
        self._charge(stack, pricing.Usage.of(e.measure, e.amount))

    def _speech(self, e: ev.StageSpan) -> None:
        if e.stage == "user" and self._view.turn_stack is not None:
            stack = self._view.turn_stack
            self._speech_secs[stack] = self._speech_secs.get(stack, 0.0) + max(0.0, e.end - e.start)

    def _charge(self, stack: Stack, usage: pricing.Usage) -> None:
        dollars = pricing.cost_of(usage, dict(zip(STACK, stack, strict=True)))
        if dollars > 0:
            COST.labels(*stack_labels(stack)).inc(dollars)
