"""``/metrics`` for Prometheus, beside the page (``ui.server``), and behind a token when set.

Each worker process serves its own: Prometheus scrapes every worker's port
directly, never through the sticky balancer (which would hand each scrape to
whichever worker holds the cookie). With ``VOICE_LAB_METRICS_TOKEN`` set a
scrape must send ``Authorization: Bearer <token>``; on a public Space without
one, ``/metrics`` is not served at all.
"""

from __future__ import annotations

import hmac
import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pipeline.telemetry import settings

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


def _authorised(request: Request, token: str) -> bool:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), token.encode()
    )


def metrics(request: Request) -> Response:
    """Prometheus' text format; a sync endpoint, so rendering runs off the event loop."""
    token = settings.metrics_token()
    if token is None and not settings.metrics_open_without_token():
        return PlainTextResponse("Not Found", status_code=404)
    if token is not None and not _authorised(request, token):
        return PlainTextResponse(
            "A bearer token is required.",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="voice-lab-metrics"'},
        )
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


METRICS_ROUTE = Route(METRICS_PATH, metrics, methods=["GET"], name="metrics")


def warn_if_closed() -> None:
    """Say at start when ``/metrics`` (served by :func:`ui.server.app_kwargs`) answers nobody."""
    if settings.metrics_token() is None and not settings.metrics_open_without_token():
        log.warning("/metrics is off on this Space: set VOICE_LAB_METRICS_TOKEN to serve it")
