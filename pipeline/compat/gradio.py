"""Gradio's (and Starlette's, under it) internals we rely on. Imports neither library."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.compat import Reliance

CONTRACT = [
    Reliance(
        "gradio",
        "gradio.routes",
        "_is_server_fn",
        "the flag Gradio's /gradio_api/component_server route requires on a callable component "
        "method: set on the guard's offer and quit_output_stream, checked by ui.hostile first",
        "a public server-function decorator usable on an instance's replacement method",
    ),
    Reliance(
        "starlette",
        "starlette.applications.Starlette",
        "middleware_stack",
        "Gradio builds its app with debug=True (tracebacks to clients): the stack is rebuilt "
        "after launch with debug off",
        "Gradio launching with debug=False, or a launch option for it",
        on_instance=True,
    ),
]


def mark_server_fn(fn: Callable) -> Callable:
    """Let Gradio's component-server route call ``fn`` (as fastrtc's ``@server`` does)."""
    fn._is_server_fn = True  # type: ignore[attr-defined]
    return fn


def is_server_fn(fn: object) -> bool:
    """Whether Gradio's component-server route would call ``fn``."""
    return bool(getattr(fn, "_is_server_fn", False))


def hide_tracebacks(app) -> None:
    """Make a launched Starlette app answer errors without a traceback.

    Starlette builds its error middleware, with the app's ``debug``, on the
    first request; Gradio sets ``debug=True``. Clearing the built stack makes
    the next request build it again with ``debug`` off.
    """
    app.debug = False
    app.middleware_stack = None
