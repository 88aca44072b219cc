"""The HTTP server around the page: our routes and middleware beside Gradio's.

Gradio builds its FastAPI app inside ``launch()``; its public hook for what we
add is ``launch(app_kwargs=...)``, handed to ``FastAPI(...)``. Routes given
there come before Gradio's own, and middleware wraps every response, Gradio's
SSE streams and the WebRTC component's requests included.

:func:`app_kwargs` lists everything the server serves besides the page, so one
function shows it all: Gradio's API schema answered 404 (:mod:`ui.hostile`),
``/metrics`` (:mod:`ui.observability`), ``/health``. Outermost, every
response is named by its worker (below); then come the public-page
protections, outermost first: who the client is (:mod:`ui.clients`, which
every per-client limit after it reads), quiet refusals of hostile requests
(:mod:`ui.hostile`), then the per-client limits on uploads and queued requests
(:mod:`ui.limits`).

What every worker serves besides the page (``python -m deploy`` runs several
behind HAProxy; a single ``python app.py`` is one worker too):

- the ``X-Voice-Lab-Worker`` header on every response, naming this process;
- ``GET /health``: liveness for the balancer's HTTP check, with how full the
  worker is (JSON);
- HAProxy's agent-check on ``VOICE_LAB_AGENT_PORT``: ``ready N%`` while the
  worker takes new visitors (N: its free share of slots), ``drain`` once it is
  full or told to drain. A drained server keeps its cookie-pinned visitors
  (their page, queue, offer and ICE candidates) but gets no new ones; a failed
  HTTP check instead marks it down, and its visitors move (that is for a dead
  worker).
- ``SIGUSR1`` drains the worker for a rolling restart: no new visitors, the
  current calls finish, then the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socketserver
import threading
import time
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from pipeline.server_settings import ServerSettings
from ui import clients, hostile, limits, observability

log = logging.getLogger("voice_lab.server")
access = logging.getLogger("voice_lab.access")

# FastAPI (0.163+) traces and measures every request into the global OpenTelemetry
# providers once they exist: with tracing on (pipeline.telemetry) each of the page's
# queue polls and SSE streams would become a trace of its own. Sessions are what we trace.
FASTAPI_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}

WORKER_HEADER = "X-Voice-Lab-Worker"
# A draining worker exits this long after the signal even if calls remain (they end).
DRAIN_LIMIT_SECS = 600.0

# Gradio's queue: requests waiting beyond this are turned away ("queue full").
QUEUE_MAX_SIZE = 64
# ... and what one page (Gradio session) or one client may have waiting in it.
QUEUE_PER_SESSION = 8
QUEUE_PER_CLIENT = 16
# What Gradio accepts as an upload at all (a session file is the only upload).
MAX_UPLOAD_BYTES = 8 * 1024 * 1024


def public_page_middleware(settings: ServerSettings) -> list[Middleware]:
    """The protections every public page needs (the trusted proxies read from the environment)."""
    uploads = limits.UploadLimits.of(
        settings.upload_mb_per_client, settings.upload_cache_mb, MAX_UPLOAD_BYTES
    )
    return [
        Middleware(clients.ClientAddress, proxies=clients.TrustedProxies.from_env()),
        Middleware(hostile.QuietErrors),
        Middleware(limits.UploadGate, limits=uploads),
        Middleware(
            limits.QueueGate,
            limits=limits.QueueLimits(per_session=QUEUE_PER_SESSION, per_client=QUEUE_PER_CLIENT),
        ),
    ]


class WorkerStatus:
    """How full this worker is, read from the WebRTC component's open connections.

    ``component`` is fastrtc's ``WebRTC``: ``pcs`` holds one entry per admitted
    peer connection, the slots ``concurrency_limit`` counts.
    """

    def __init__(self, component, worker: str):
        self.component = component
        self.worker = worker
        self.draining = False

    @property
    def sessions(self) -> int:
        return len(self.component.pcs)

    @property
    def capacity(self) -> int | None:
        return self.component.concurrency_limit

    def free_share(self) -> float:
        """The share of slots free for new visitors (0 when full or draining)."""
        if self.draining:
            return 0.0
        capacity = self.capacity
        if capacity is None:
            return 1.0
        return max(0, capacity - self.sessions) / capacity if capacity else 0.0

    def agent_answer(self) -> bytes:
        """HAProxy's agent protocol: ``ready`` with a weight, or ``drain`` (new visitors: none)."""
        share = self.free_share()
        return f"ready {max(1, round(share * 100))}%\n".encode() if share > 0 else b"drain\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "sessions": self.sessions,
            "capacity": self.capacity,
            "draining": self.draining,
            "accepting": self.free_share() > 0,
        }


class WorkerHeader:
    """Pure ASGI middleware: names the worker on every response (and logs it, if asked).

    Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would buffer
    Gradio's server-sent event streams.
    """

    def __init__(self, app, worker: str, log_requests: bool = False):
        self.app = app
        self.header = (WORKER_HEADER.lower().encode(), worker.encode())
        self.worker = worker
        self.log_requests = log_requests

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
                if self.log_requests and scope["path"] != "/health":  # not the balancer's checks
                    # The path only: a query string may carry a session hash.
                    method, path = scope["method"], scope["path"]
                    access.info("%s %s %s %d", self.worker, method, path, message["status"])
            await send(message)

        await self.app(scope, receive, send_named)


class _AgentHandler(socketserver.BaseRequestHandler):
    server: CapacityAgent

    def handle(self) -> None:
        self.request.sendall(self.server.status.agent_answer())


class CapacityAgent(socketserver.ThreadingTCPServer):
    """Answers HAProxy's agent-check (one line per connection) from a daemon thread."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, host: str, port: int, status: WorkerStatus):
        self.status = status
        super().__init__((host, port), _AgentHandler)

    def start(self) -> CapacityAgent:
        threading.Thread(target=self.serve_forever, name="haproxy-agent", daemon=True).start()
        return self


def health_route(status: WorkerStatus) -> Route:
    async def health(_request: Request) -> JSONResponse:
        return JSONResponse(status.as_dict(), headers={"Cache-Control": "no-store"})

    return Route("/health", health, methods=["GET", "HEAD"])


def app_kwargs(settings: ServerSettings, status: WorkerStatus | None = None) -> dict[str, Any]:
    """What ``demo.launch(app_kwargs=...)`` gets: fresh lists, so a second launch starts clean."""
    routes: list[BaseRoute] = [
        *hostile.ROUTES,
        observability.METRICS_ROUTE,
        *([health_route(status)] if status else []),
    ]
    middleware = [
        # Outermost: even a refusal below names the worker that made it.
        Middleware(WorkerHeader, worker=settings.worker, log_requests=settings.access_log),
        *public_page_middleware(settings),
    ]
    return {
        "routes": routes,
        "middleware": middleware,
        "telemetry": dict(FASTAPI_TELEMETRY),
        # FastAPI's own route list; nothing here is a public API.
        "openapi_url": None,
    }


def serve_worker(status: WorkerStatus, settings: ServerSettings) -> None:
    """The balancer's side of this process: the agent-check port and the drain signal."""
    port = settings.agent_port
    if port is not None:
        host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
        CapacityAgent(host, port, status).start()
        log.info("HAProxy agent-check answering on %s:%d", host, port)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, lambda *_: _drain(status))


def _drain(status: WorkerStatus) -> None:
    if status.draining:
        return
    status.draining = True
    log.info("draining: no new visitors; exiting once the %d current call(s) end", status.sessions)
    threading.Thread(target=_exit_when_idle, args=(status,), name="drain", daemon=True).start()


def _exit_when_idle(status: WorkerStatus) -> None:
    deadline = time.monotonic() + DRAIN_LIMIT_SECS
    while status.sessions and time.monotonic() < deadline:
        time.sleep(0.5)
    log.info("drained (%d call(s) left): exiting", status.sessions)
    os.kill(os.getpid(), signal.SIGTERM)
