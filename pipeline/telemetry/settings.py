"""Telemetry settings from the environment (``.env.example``, docs/observability.md).

The standard OpenTelemetry variables decide where traces go; ours decide what
they may hold and who may read ``/metrics``. Nothing here imports OpenTelemetry.
"""

from __future__ import annotations

import os

from pipeline.server_settings import env_flag as _flag


def traces_endpoint() -> str | None:
    """Where OTLP/HTTP traces go (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``..._ENDPOINT``)."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED=true``: the standard switch that turns all of it off."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def trace_download() -> bool:
    """Keep each session's spans in memory for the page's "Download trace" (default on)."""
    return _flag("VOICE_LAB_TRACE_DOWNLOAD", True)


def tracing_enabled() -> bool:
    """Sessions record spans: to export them, or to offer them for download."""
    return not sdk_disabled() and (traces_endpoint() is not None or trace_download())


def trace_content() -> bool:
    """Transcripts, LLM text and tool arguments go into spans (``VOICE_LAB_TRACE_CONTENT=1``)."""
    return _flag("VOICE_LAB_TRACE_CONTENT", False)


def trace_exporters() -> list[str]:
    """``OTEL_TRACES_EXPORTER``'s list (default ``otlp``), as the SDK's auto-setup reads it."""
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    return [name.strip() for name in raw.split(",") if name.strip()]


def otlp_protocol() -> str:
    """The OTLP protocol asked for (only ``http/protobuf`` is shipped)."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(name, "").strip().lower()
        if value:
            return value
    return "http/protobuf"


def metrics_token() -> str | None:
    """The bearer token ``/metrics`` requires (``VOICE_LAB_METRICS_TOKEN``); None: none set."""
    return os.environ.get("VOICE_LAB_METRICS_TOKEN", "").strip() or None


def metrics_open_without_token() -> bool:
    """Whether ``/metrics`` answers with no token set: yes locally, never on a public Space."""
    return not os.environ.get("SPACE_ID")
