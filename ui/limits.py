"""Per-client limits on what one visitor can make the server hold: uploads and queued requests.

Both are ASGI middleware around Gradio's own routes (``ui.server``), counting
by :func:`ui.clients.client_of_scope`:

- :class:`UploadGate`, on ``/gradio_api/upload``: one client may upload
  ``upload_mb_per_client`` megabytes per 10 minutes (each upload counts as at
  least 1 MB, so a flood of tiny files is bounded too), and the upload cache
  (what Gradio keeps until its sweep) holds at most ``upload_cache_mb`` with
  the uploads under way (the server's settings). Gradio itself only
  bounds each file's size. :data:`PENDING_UPLOADS` tells a replay when no
  other upload waits for the file it read, so it can delete it.
- :class:`QueueGate`, on ``/gradio_api/queue/join`` and ``/gradio_api/call/``:
  one page (Gradio session) may have ``per_session`` requests waiting in
  Gradio's queue and one client ``per_client``, both below the queue's global
  size, so one client cannot fill it and turn every other visitor away with
  "queue full".

A refusal is a 429 (or 507: the cache is full) with a plain sentence, and one
line in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.responses import JSONResponse, PlainTextResponse

from ui.clients import client_key, client_of_scope

log = logging.getLogger(__name__)

MB = 1024 * 1024
UPLOAD_WINDOW_SECS = 600.0
# Every upload counts as at least this much against its client's allowance.
MIN_UPLOAD_CHARGE = MB
# Multipart framing around the one file the page uploads.
MULTIPART_OVERHEAD = 64 * 1024
# The largest queue/join body read to find its session (the page's are a few kB).
MAX_JOIN_BODY = 1 * MB


class RateWindow:
    """At most ``limit`` (requests, bytes, ...) per key within any ``window_secs``.

    Keeps the amounts taken within the window, per key; the least recently
    seen keys are forgotten beyond ``max_keys`` (a bound on memory, whoever calls).
    """

    def __init__(
        self,
        limit: float,
        window_secs: float,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.window = window_secs
        self.max_keys = max_keys
        self._now = clock
        self._taken: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()

    def _recent(self, key: str) -> deque[tuple[float, float]]:
        taken = self._taken.get(key)
        if taken is None:
            taken = self._taken[key] = deque()
            while len(self._taken) > self.max_keys:
                self._taken.popitem(last=False)
        self._taken.move_to_end(key)
        horizon = self._now() - self.window
        while taken and taken[0][0] <= horizon:
            taken.popleft()
        return taken

    def take(self, key: str, amount: float = 1.0) -> bool:
        """Count ``amount`` for ``key`` if within the limit (False: over it, nothing counted)."""
        taken = self._recent(key)
        if sum(a for _, a in taken) + amount > self.limit:
            return False
        taken.append((self._now(), amount))
        return True

    def retry_after(self, key: str, amount: float = 1.0) -> float:
        """Seconds until ``amount`` would fit for ``key`` (0: it fits now; inf: never)."""
        if amount > self.limit:
            return math.inf
        taken = self._recent(key)
        total = sum(a for _, a in taken)
        if total + amount <= self.limit:
            return 0.0
        for t, a in taken:  # oldest first: each frees its amount once it leaves the window
            total -= a
            if total + amount <= self.limit:
                return max(0.0, t + self.window - self._now())
        return math.inf


def _minutes(seconds: float) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute{'s' if minutes > 1 else ''}"


def posted_to(scope, route: str) -> bool:
    """An HTTP POST to Gradio's ``route`` (wherever the app is mounted)."""
    return (
        scope["type"] == "http"
        and scope["method"] == "POST"
        and scope["path"].rstrip("/").endswith(route)
    )


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


# -- uploads ------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadLimits:
    per_client_bytes: float
    cache_bytes: float
    max_request_bytes: int

    @classmethod
    def of(cls, per_client_mb: float, cache_mb: float, max_upload_bytes: int) -> UploadLimits:
        """The server's ``upload_mb_per_client`` and ``upload_cache_mb``; Gradio's file limit."""
        return cls(
            per_client_bytes=per_client_mb * MB,
            cache_bytes=cache_mb * MB,
            max_request_bytes=max_upload_bytes + MULTIPART_OVERHEAD,
        )


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder`` (0 if it does not exist)."""
    total = 0
    pending = [folder]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def upload_folder(scope) -> Path:
    """Where Gradio keeps uploads: its app's ``uploaded_file_dir`` (``GRADIO_TEMP_DIR``)."""
    folder = getattr(scope.get("app"), "uploaded_file_dir", None)
    if folder is None:
        from gradio.utils import get_upload_folder

        folder = get_upload_folder()
    return Path(folder)


class PendingUploads:
    """Uploaded files not read yet, by path: a file is deleted only once nobody waits for it.

    Gradio stores an upload under a folder named by its content, so identical
    uploads (two visitors replaying the same file) share one path.
    """

    def __init__(self, max_paths: int = 10_000):
        self._waiting: OrderedDict[str, int] = OrderedDict()
        self._max = max_paths

    def add(self, path: str) -> None:
        key = str(Path(path).resolve())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self._waiting.move_to_end(key)
        while len(self._waiting) > self._max:
            self._waiting.popitem(last=False)

    def release(self, path: str) -> bool:
        """One upload of ``path`` was read; True if no other upload of it waits (delete it)."""
        key = str(Path(path).resolve())
        left = self._waiting.get(key, 1) - 1
        if left > 0:
            self._waiting[key] = left
            return False
        self._waiting.pop(key, None)
        return True


# Every upload the gate let through; ``ui.layout`` releases each as its replay reads it.
PENDING_UPLOADS = PendingUploads()


class UploadGate:
    """ASGI middleware: a per-client allowance and a total cap on Gradio's upload cache."""

    def __init__(self, app, limits: UploadLimits, pending: PendingUploads = PENDING_UPLOADS):
        self.app = app
        self.limits = limits
        self.pending = pending
        self.per_client = RateWindow(limits.per_client_bytes, UPLOAD_WINDOW_SECS)
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if not posted_to(scope, "/gradio_api/upload"):
            await self.app(scope, receive, send)
            return
        refusal, size = await self._check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        self.in_flight += size
        response = _Captured(send)
        try:
            await self.app(scope, receive, response.send)
        finally:
            self.in_flight -= size
        for path in response.paths():
            self.pending.add(path)

    async def _check(self, scope) -> tuple[PlainTextResponse | None, int]:
        client = client_of_scope(scope)
        declared = _header(scope, b"content-length")
        if declared is None or not declared.isdigit():
            # Browsers always say how big an upload is; without it nothing below holds.
            log.info("refused an upload without a Content-Length")
            return PlainTextResponse("An upload must say its length.", status_code=411), 0
        size = int(declared)
        if size > self.limits.max_request_bytes:
            log.info("refused an upload of %d bytes", size)
            return PlainTextResponse("That file is too large.", status_code=413), 0
        charge = max(size, MIN_UPLOAD_CHARGE)
        if not self.per_client.take(client, charge):
            wait = self.per_client.retry_after(client, charge)
            log.info("refused an upload: its client is over its upload allowance")
            return PlainTextResponse(
                f"Too many uploads from your address: try again in {_minutes(wait)}.",
                status_code=429,
                headers={"Retry-After": str(math.ceil(min(wait, UPLOAD_WINDOW_SECS)))},
            ), 0
        cached = await asyncio.to_thread(folder_bytes, upload_folder(scope))
        if cached + self.in_flight + size > self.limits.cache_bytes:
            log.warning("refused an upload: the upload cache is full (%.0f MB)", cached / MB)
            return PlainTextResponse(
                "The server's upload space is full: try again later.", status_code=507
            ), 0
        return None, size


class _Captured:
    """Passes a response on, keeping a small successful one's body (the stored paths)."""

    LIMIT = 64 * 1024

    def __init__(self, send):
        self._send = send
        self.status = 0
        self.body = b""

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and len(self.body) < self.LIMIT:
            self.body += message.get("body", b"")
        await self._send(message)

    def paths(self) -> list[str]:
        if self.status != 200:
            return []
        try:
            paths = json.loads(self.body)
        except ValueError:
            return []
        return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


# -- the queue ----------------------------------------------------------------------


def waiting_events(app) -> list[tuple[str, str]]:
    """(session hash, client key) of every request waiting in Gradio's queue.

    Gradio 5.50 has no public view of its queue by session; this reads
    ``Blocks._queue.event_queue_per_concurrency_id`` (what its own ``max_size``
    counts). Retire it when Gradio limits pending events per session itself.
    """
    queue = getattr(app.get_blocks(), "_queue", None)
    per_id = getattr(queue, "event_queue_per_concurrency_id", None) or {}
    waiting = []
    for event_queue in list(per_id.values()):
        for event in list(event_queue.queue):
            request = getattr(event, "request", None)
            client = getattr(getattr(request, "client", None), "host", None)
            waiting.append((event.session_hash, client_key(client)))
    return waiting


@dataclass(frozen=True)
class QueueLimits:
    per_session: int
    per_client: int


class QueueGate:
    """ASGI middleware: a page or a client may have only so many requests waiting in the queue.

    Counted: what waits in Gradio's queue, plus the joins let through and not
    yet queued (concurrent joins would otherwise all pass the same count).
    """

    def __init__(self, app, limits: QueueLimits):
        self.app = app
        self.limits = limits
        self._joining: Counter[str] = Counter()

    async def __call__(self, scope, receive, send):
        # The page joins the queue; Gradio's "simple" API (/call/<name>) queues the same way.
        if not (posted_to(scope, "/gradio_api/queue/join") or _posted_call(scope)):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive, MAX_JOIN_BODY)
        if body is None:
            log.info("refused a queue request: its body is too large")
            await JSONResponse({"detail": "Request too large."}, status_code=413)(
                scope, receive, send
            )
            return
        session, client = f"session:{_session_hash(body)}", f"client:{client_of_scope(scope)}"
        refusal = self._refusal(scope, session, client)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        self._joining.update((session, client))
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            self._joining.subtract((session, client))
            for key in (session, client):
                if self._joining[key] <= 0:
                    del self._joining[key]

    def _refusal(self, scope, session: str, client: str) -> JSONResponse | None:
        app = scope.get("app")
        if app is None or not hasattr(app, "get_blocks"):
            return None
        waiting: Counter[str] = Counter()
        for session_hash, owner in waiting_events(app):
            waiting.update((f"session:{session_hash}", f"client:{owner}"))
        if waiting[session] + self._joining[session] >= self.limits.per_session:
            what = "this page"
        elif waiting[client] + self._joining[client] >= self.limits.per_client:
            what = "your address"
        else:
            return None
        log.info("refused a queue request: %s has too many waiting", what.split()[-1])
        return JSONResponse(
            {"detail": f"Too many requests waiting from {what}: try again in a moment."},
            status_code=429,
            headers={"Retry-After": "2"},
        )


def _posted_call(scope) -> bool:
    return (
        scope["type"] == "http"
        and scope["method"] == "POST"
        and "/gradio_api/call/" in scope["path"]
    )


def _session_hash(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("session_hash")
    except (ValueError, AttributeError):
        return None  # Gradio answers a malformed body itself (422)
    return value if isinstance(value, str) else None


async def read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that hands the app ``body`` once, then the connection's own messages."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
