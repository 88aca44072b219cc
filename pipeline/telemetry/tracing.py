"""The process's OpenTelemetry tracing: the tracer provider, the scrubber, exporters, OTLP/JSON.

Imported only once a session starts with tracing on (see
:func:`pipeline.telemetry.settings.tracing_enabled`); the OTLP exporter only
when an endpoint is configured. The spans of one session are
:mod:`pipeline.telemetry.spans`.

The tracer provider is the OpenTelemetry SDK's, built here rather than by
pipecat's ``setup_tracing``: that one fixes ``service.instance.id`` to the
host name (the same for every worker on a host) and takes no resource
attributes of ours; this one reads ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_SERVICE_NAME`` and the sampler variables as the SDK does, and adds the
worker's id. pipecat's service spans reach it through the global provider.

Every finished span passes :class:`Scrubber` before any exporter sees it:
raw transcripts, LLM text and tool arguments are dropped unless
``VOICE_LAB_TRACE_CONTENT=1``, and every string is run through
:func:`pipeline.redaction.redact`, so no API key (the server's, or one a
visitor typed) reaches a span, an attribute or the resource. Each session's
spans are also kept in memory, bounded, for the page's "Download trace".
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanLimits,
    SpanProcessor,
    TracerProvider,
)
from opentelemetry.trace import Status
from pipecat.utils.tracing.tracing_context import TracingContext

from pipeline.compat.pipecat import set_worker_tracing_context
from pipeline.redaction import redact
from pipeline.server_settings import worker_id
from pipeline.telemetry import settings

log = logging.getLogger(__name__)

SERVICE_NAME = "voice-lab"
TRACER_NAME = "voice_lab"
# Longest attribute value kept when OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT says nothing:
# with content on, an LLM span's input holds the whole conversation.
DEFAULT_ATTRIBUTE_CHARS = 4096

# Attributes holding what the user said or the bot wrote: pipecat's, OpenInference's,
# the GenAI conventions', and ours. Dropped unless VOICE_LAB_TRACE_CONTENT=1.
CONTENT_ATTRIBUTES = frozenset(
    {
        "transcript",
        "text",
        "input",
        "output",
        "text_output",
        "user_id",
        "gen_ai.system_instructions",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.tool.call.arguments",
        "gen_ai.tool.call.result",
        "input.value",
        "output.value",
        "voice_lab.user.text",
        "voice_lab.bot.text",
        "voice_lab.speculation.text",
    }
)
CONTENT_PREFIXES = (
    "gen_ai.prompt",
    "gen_ai.completion",
    "llm.input_messages",
    "llm.output_messages",
)


# --------------------------------------------------------------------------- scrubbing


def _is_content(key: str) -> bool:
    return key in CONTENT_ATTRIBUTES or key.startswith(CONTENT_PREFIXES)


def _clean_value(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, tuple | list):
        return tuple(redact(v) if isinstance(v, str) else v for v in value)
    return value


def clean_attributes(attributes, keep_content: bool) -> dict:
    """``attributes`` with every key masked, and without content unless ``keep_content``."""
    return {
        key: _clean_value(value)
        for key, value in (attributes or {}).items()
        if keep_content or not _is_content(key)
    }


def scrubbed(span: ReadableSpan, keep_content: bool, end_time: int | None = None) -> ReadableSpan:
    """A copy of ``span`` fit to leave the process (``end_time``: close an open one's copy)."""
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    attributes = clean_attributes(span.attributes, keep_content)
    if end_time is not None:
        attributes["voice_lab.open"] = True
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=[
            Event(e.name, clean_attributes(e.attributes, keep_content), e.timestamp)
            for e in span.events
        ],
        links=span.links,
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=end_time if end_time is not None else span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class Scrubber(SpanProcessor):
    """Hands a scrubbed copy of every finished span to the processors behind it."""

    def __init__(self, downstream: Sequence[SpanProcessor], keep_content: bool):
        self._downstream = list(downstream)
        self.keep_content = keep_content

    def on_end(self, span: ReadableSpan) -> None:
        if not self._downstream:
            return
        clean = scrubbed(span, self.keep_content)
        for processor in self._downstream:
            processor.on_end(clean)

    def shutdown(self) -> None:
        for processor in self._downstream:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._downstream)


class SessionSpans(SpanProcessor):
    """Routes each finished span to the buffer of the session whose trace it belongs to."""

    def __init__(self) -> None:
        self._buffers: dict[int, deque[ReadableSpan]] = {}

    def register(self, trace_id: int, buffer: deque[ReadableSpan]) -> None:
        self._buffers[trace_id] = buffer

    def unregister(self, trace_id: int) -> None:
        self._buffers.pop(trace_id, None)

    def on_end(self, span: ReadableSpan) -> None:
        buffer = self._buffers.get(span.context.trace_id)
        if buffer is not None:
            buffer.append(span)


# --------------------------------------------------------------------------- set-up


@dataclass
class Tracing:
    """The process's tracing: the tracer our spans come from and the per-session span store."""

    tracer: trace.Tracer
    sessions: SessionSpans
    keep_content: bool
    exporting: bool


_tracing: Tracing | None = None
_set_up = False
_lock = threading.Lock()


def tracing() -> Tracing | None:
    """Set tracing up on first use (None: it could not be): provider, scrubber, exporters."""
    global _tracing, _set_up
    with _lock:
        if not _set_up:
            _set_up = True
            try:
                _tracing = _set_up_tracing()
            except Exception:
                log.exception("tracing could not be set up: sessions run without it")
    return _tracing


def _resource() -> Resource:
    """The SDK's resource (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``), then ours.

    ``service.instance.id`` stays the SDK's: a random id per process, as the
    specification asks; ``voice_lab.worker.id`` says which worker that was.
    """
    from_env = Resource.create()
    ours: dict[str, str] = {"voice_lab.worker.id": worker_id()}
    if "host.name" not in from_env.attributes:
        ours["host.name"] = socket.gethostname()
    if str(from_env.attributes.get("service.name", "")).startswith("unknown_service"):
        ours["service.name"] = SERVICE_NAME
    merged = from_env.merge(Resource(ours))
    return Resource({k: _clean_value(v) for k, v in merged.attributes.items()})


def _span_limits() -> SpanLimits:
    import os

    if os.environ.get("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT") or os.environ.get(
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"
    ):
        return SpanLimits()  # the SDK reads them
    return SpanLimits(max_span_attribute_length=DEFAULT_ATTRIBUTE_CHARS)


def _exporters() -> list[SpanProcessor]:
    """A batch processor per exporter ``OTEL_TRACES_EXPORTER`` names (default: OTLP/HTTP)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    processors: list[SpanProcessor] = []
    for name in settings.trace_exporters():
        if name == "otlp":
            protocol = settings.otlp_protocol()
            if protocol != "http/protobuf":
                log.warning(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: traces are sent over "
                    "http/protobuf only, so none are exported (the page's Download trace works)",
                    protocol,
                )
                continue
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", name)
    return processors


def _set_up_tracing() -> Tracing:
    sessions = SessionSpans()
    exporters = _exporters() if settings.traces_endpoint() else []
    scrubber = Scrubber([sessions, *exporters], keep_content=settings.trace_content())
    current = trace.get_tracer_provider()
    if isinstance(current, trace.ProxyTracerProvider):
        # The sampler comes from OTEL_TRACES_SAMPLER(_ARG), as the SDK reads them.
        provider = TracerProvider(resource=_resource(), span_limits=_span_limits())
        provider.add_span_processor(scrubber)
        trace.set_tracer_provider(provider)
    elif hasattr(current, "add_span_processor"):
        # Someone set one first (opentelemetry-instrument, a host app): the first wins,
        # and pipecat's spans go to it, so ours join it there.
        log.info("tracing: adding Voice Lab's span processors to the tracer provider already set")
        current.add_span_processor(scrubber)
    else:
        raise RuntimeError(f"the tracer provider {type(current).__name__} takes no processors")
    where = settings.traces_endpoint() if exporters else "nowhere (Download trace only)"
    log.info("tracing on: spans exported to %s", where)
    return Tracing(trace.get_tracer(TRACER_NAME), sessions, scrubber.keep_content, bool(exporters))


def share_tracing_context(worker, context: TracingContext) -> None:
    """Make ``worker``'s services parent their spans on the session's context.

    pipecat's ``PipelineWorker`` makes a ``TracingContext`` of its own, and only
    when its turn tracking is on (whose turn spans we replace, see the module
    docstring); services read ``worker._tracing_context`` when they are set up.
    (see :func:`pipeline.compat.pipecat.set_worker_tracing_context`).
    """
    set_worker_tracing_context(worker, context)


def otlp_json(spans: Iterable[ReadableSpan]) -> dict:
    """``spans`` as an OTLP/JSON ``ExportTraceServiceRequest`` (ids in hex, as the spec says).

    Encoded by the OTLP exporter's own encoder and protobuf's JSON mapping; the
    OTLP/JSON spec differs from that mapping only in trace and span ids, which
    it writes as hex rather than base64.
    """
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    data = MessageToDict(encode_spans(list(spans)), use_integers_for_enums=True)
    for resource in data.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                _hex_ids(span)
                for link in span.get("links", []):
                    _hex_ids(link)
    return data


def _hex_ids(item: dict) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if item.get(key):
            item[key] = base64.b64decode(item[key]).hex()
