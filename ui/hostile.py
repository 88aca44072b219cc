"""Hostile requests get a short refusal and one log line: never a traceback, nor a route list.

A public Space is probed with garbage. Gradio 5.50 prints a full traceback for
every request whose inputs fail its checks (a dropdown value not in the list,
a malformed file or WebRTC value: ``traceback.print_exc()`` in its queue), and
a request naming an unknown component dies with a ``KeyError`` that uvicorn
logs as an ERROR with its traceback. An attacker filled the log with 133 of
them. Here:

- :func:`quiet_input_refusals` makes a request whose inputs do not pass
  Gradio's own preprocessing a plain ``gr.Error`` that Gradio does not print,
  with one log line naming the event and the error's type.
- :class:`QuietErrors` (middleware) answers a ``component_server`` call for a
  component or function that does not exist with a 404 before Gradio looks it
  up, and turns any other exception that escapes a route into a 500 with one
  log line (the traceback at DEBUG, for whoever debugs the server itself).
- FastAPI's ``/openapi.json`` is off (``openapi_url=None`` in ``ui.server``) and
  Gradio's own copy is answered 404 by :data:`ROUTES`.
"""

from __future__ import annotations

import json
import logging

import gradio as gr
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.compat.gradio import is_server_fn
from ui.limits import posted_to, read_body, replay

log = logging.getLogger(__name__)

# The largest component_server body read (an SDP offer is at most 64 kB).
MAX_COMPONENT_CALL_BODY = 256 * 1024
REFUSED = "That request is not valid."


def _summary(error: BaseException) -> str:
    """What a log line says of an exception: its type. Its message may quote the request."""
    return type(error).__name__


def quiet_input_refusals(demo: gr.Blocks) -> None:
    """Inputs that fail Gradio's preprocessing are refused with one log line, not a traceback.

    Gradio has no hook between reading an event's inputs and running it, so
    this wraps the ``Blocks.preprocess_data`` of our one ``demo`` (every queued
    and direct event goes through it). Retire it when Gradio stops printing
    tracebacks for its own input validation errors.
    """
    preprocess = demo.preprocess_data

    async def preprocess_data(block_fn, inputs, state, *args, **kwargs):
        try:
            return await preprocess(block_fn, inputs, state, *args, **kwargs)
        except Exception as e:
            log.info("refused a request to %s: %s", getattr(block_fn, "name", "?"), _summary(e))
            raise gr.Error(REFUSED, print_exception=False) from None

    demo.preprocess_data = preprocess_data  # type: ignore[method-assign]  # a patch, deliberate


def _not_found(_request) -> JSONResponse:
    return JSONResponse({"detail": "Not Found"}, status_code=404)


# Gradio serves its own OpenAPI document under the API prefix: nothing here is a public API.
ROUTES = [Route("/gradio_api/openapi.json", _not_found)]


class QuietErrors:
    """ASGI middleware: unknown component calls get a 404; escaping exceptions one log line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if posted_to(scope, "/gradio_api/component_server"):
            body = await read_body(receive, MAX_COMPONENT_CALL_BODY)
            problem = "too large" if body is None else _unknown_call(scope.get("app"), body)
            if problem or body is None:
                log.info("refused a component call: %s", problem)
                status = 413 if body is None else 404
                await JSONResponse({"detail": REFUSED}, status_code=status)(scope, receive, send)
                return
            receive = replay(body, receive)

        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            log.error("%s %r failed: %s", scope["method"], scope["path"][:200], _summary(e))
            log.debug("the failure's traceback", exc_info=True)
            if not started:
                response = JSONResponse({"detail": "Internal Server Error"}, status_code=500)
                await response(scope, receive, send)


def _unknown_call(app, body: bytes) -> str | None:
    """Why a JSON component_server call names nothing that exists (None: it does, or not JSON).

    Gradio looks the component up by id without checking it (a KeyError, a
    500), so the check comes first. Multipart calls (files) are left to Gradio.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or app is None or not hasattr(app, "get_blocks"):
        return None
    component_id, fn_name = payload.get("component_id"), payload.get("fn_name")
    block = None
    if isinstance(component_id, int) and not isinstance(component_id, bool):
        block = app.get_blocks().blocks.get(component_id)
    if block is None:
        return "no such component"
    fn = getattr(block, fn_name, None) if isinstance(fn_name, str) else None
    if fn is None or not is_server_fn(fn):
        return "no such function"
    return None
