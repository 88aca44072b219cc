"""Each session seen from outside: Prometheus metrics and OpenTelemetry spans, from its events.

The dashboard's figures are folded from the session's events
(:mod:`pipeline.events`, reported by the observers); metrics and spans are
made from the very same events, by :class:`SessionTelemetry`, so they agree
with the page by construction and cost nothing per audio frame: a dictionary
look-up per event, a few attribute writes for the ones that count.

    VoiceSession.report(event) --> SessionTelemetry.observe(event)
                                     |-- SessionMetrics  (prometheus_client, this worker)
                                     |-- SessionTrace    (OpenTelemetry, when tracing is on)
                                     `-- DashboardView   (turn numbers, barge-ins: ui.state's rules)

Tracing is set up when the first session starts (never at import): pipecat's
service spans need a tracer provider, and the OTLP exporter is imported only
when an endpoint is configured (:mod:`pipeline.telemetry.settings`). The process's
tracing is :mod:`pipeline.telemetry.tracing`; a session's spans, :mod:`pipeline.telemetry.spans`.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from pipeline import events as ev
from pipeline.telemetry import metrics, settings
from pipeline.telemetry.view import DashboardView

if TYPE_CHECKING:
    from pipeline.telemetry.spans import SessionTrace

log = logging.getLogger(__name__)


class SessionTelemetry:
    """One session's metrics and spans. ``observe`` is cheap: every event passes through it."""

    def __init__(self, session_id: str | None = None):
        # Not the WebRTC connection id, which authorises the visitor's own
        # actions: this one names the session in traces and its export.
        self.session_id = session_id or uuid.uuid4().hex
        self.view = DashboardView()
        self.metrics = metrics.SessionMetrics(self.view)
        self.trace: SessionTrace | None = None
        self._failed = False

    def start(self) -> None:
        """Open the session's trace, when tracing is on (set up on the first call)."""
        if self.trace is not None or not settings.tracing_enabled():
            return
        from pipeline.telemetry import spans, tracing

        setup = tracing.tracing()
        if setup is None:
            return
        try:
            trace = spans.SessionTrace(self.session_id, self.view, setup)
            trace.start()
        except Exception:
            log.exception("this session's trace could not start: it runs untraced")
            return
        self.trace = trace

    def attach(self, worker) -> None:
        """Let a pipeline generation's services trace into this session (see ``tracing``)."""
        if self.trace is not None:
            from pipeline.telemetry.tracing import share_tracing_context

            share_tracing_context(worker, self.trace.context)

    @property
    def tracing(self) -> bool:
        return self.trace is not None

    def observe(self, event: ev.Event) -> None:
        try:
            self.metrics.observe(event)
            if self.trace is not None:
                self.trace.observe(event)
        except Exception:
            # Seeing the session from outside must never break it.
            if not self._failed:
                self._failed = True
                log.exception("telemetry failed on a %s event (no more logged)", event.kind)
        self.view.fold(event)


def refused(reason: str) -> None:
    """Count a connection or session turned away (see :data:`metrics.REFUSALS`)."""
    metrics.refused(reason)
