"""The HTTP server around the page: our routes and middleware beside Gradio's own.

Gradio builds its FastAPI app inside ``launch()``; its public hook for what we
add is ``launch(app_kwargs=...)``, handed to ``FastAPI(...)``. Routes given
there come before Gradio's own, and middleware wraps every response, Gradio's
SSE streams and the WebRTC component's requests included.

Each concern adds itself to :data:`ROUTES` or :data:`MIDDLEWARE` here, so one
file shows everything the server serves besides the page.
"""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute

ROUTES: list[BaseRoute] = []
MIDDLEWARE: list[Middleware] = []
# FastAPI (0.163+) traces and measures every request into the global OpenTelemetry
# providers once they exist: with tracing on (pipeline.telemetry) each of the page's
# queue polls and SSE streams would become a trace of its own. Sessions are what we trace.
FASTAPI_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def app_kwargs() -> dict[str, Any]:
    """What ``demo.launch(app_kwargs=...)`` gets: fresh lists, so a second launch starts clean."""
    return {
        "routes": list(ROUTES),
        "middleware": list(MIDDLEWARE),
        "telemetry": dict(FASTAPI_TELEMETRY),
    }
