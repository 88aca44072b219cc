"""The HTTP server around the page: our routes and middleware beside Gradio's.

Gradio builds its FastAPI app inside ``launch()``; its public hook for what we
add is ``launch(app_kwargs=...)``, handed to ``FastAPI(...)``. Routes given
there come before Gradio's own, and middleware wraps every response, Gradio's
SSE streams and the WebRTC component's requests included.

Each concern adds itself to :data:`ROUTES` or :data:`MIDDLEWARE` here, so one
file shows everything the server serves besides the page. The public-page
protections come first, outermost first: who the client is
(:mod:`ui.clients`, which every per-client limit after it reads), quiet
refusals of hostile requests (:mod:`ui.hostile`), then the per-client limits
on uploads and queued requests (:mod:`ui.limits`).
"""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from ui import clients, hostile, limits

ROUTES: list[BaseRoute] = []
MIDDLEWARE: list[Middleware] = []

# Gradio's queue: requests waiting beyond this are turned away ("queue full").
QUEUE_MAX_SIZE = 64
# ... and what one page (Gradio session) or one client may have waiting in it.
QUEUE_PER_SESSION = 8
QUEUE_PER_CLIENT = 16
# What Gradio accepts as an upload at all (a session file is the only upload).
MAX_UPLOAD_BYTES = 8 * 1024 * 1024


def public_page_middleware() -> list[Middleware]:
    """The protections every public page needs, configured from the environment now."""
    return [
        Middleware(clients.ClientAddress, proxies=clients.TrustedProxies.from_env()),
        Middleware(hostile.QuietErrors),
        Middleware(limits.UploadGate, limits=limits.UploadLimits.from_env(MAX_UPLOAD_BYTES)),
        Middleware(
            limits.QueueGate,
            limits=limits.QueueLimits(per_session=QUEUE_PER_SESSION, per_client=QUEUE_PER_CLIENT),
        ),
    ]


def app_kwargs() -> dict[str, Any]:
    """What ``demo.launch(app_kwargs=...)`` gets: fresh lists, so a second launch starts clean."""
    return {
        "routes": [*hostile.ROUTES, *ROUTES],
        "middleware": [*public_page_middleware(), *MIDDLEWARE],
        # FastAPI's own route list; nothing here is a public API.
        "openapi_url": None,
    }
