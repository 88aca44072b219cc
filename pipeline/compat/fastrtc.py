"""fastrtc's internals we rely on: a handler's private state, and the WebRTC component's methods.

fastrtc 0.0.34 has no hooks for what a public page needs around its component
(see :mod:`ui.webrtc_guard`), so the guard replaces methods of the one ``WebRTC``
instance; and a handler's resampler, event loop and queue-clearing callback are
attributes fastrtc sets on the handler itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from pipeline.compat import Reliance

_HANDLER = "fastrtc.tracks.StreamHandlerBase"
_WEBRTC = "fastrtc.WebRTC"
_GUARD = "offers checked and bound to the Gradio session that made them (ui.webrtc_guard)"
_GUARD_RETIRE = "fastrtc validating offers before registering them, and authorising by session"

CONTRACT = [
    Reliance(
        "fastrtc",
        _HANDLER,
        "_resampler",
        "our resample() caches a resampler that cuts 20 ms frames (fastrtc's cuts 60 ms at 16 kHz)",
        "fastrtc sizing its resampler's frames by duration",
        on_instance=True,
    ),
    Reliance(
        "fastrtc",
        _HANDLER,
        "_loop",
        "the session's loop is known before fastrtc's start_up sets it (sessions made off-loop)",
        "a public loop setter, or fastrtc setting it when it copies the handler",
        on_instance=True,
    ),
    Reliance(
        "fastrtc",
        _HANDLER,
        "_clear_queue",
        "unset at close to break a reference cycle; set by the benchmark's own listener",
        "fastrtc dropping its callbacks when a connection closes",
        on_instance=True,
    ),
    Reliance(
        "fastrtc",
        _HANDLER,
        "resample",
        "overridden for 20 ms frames (see _resampler)",
        "as above",
        params=("self", "frame"),
    ),
    Reliance(
        "fastrtc",
        "fastrtc.tracks.AudioCallback",
        "recv",
        "wrapped: a stream the server ends raises MediaStreamError instead of returning None",
        "fastrtc raising MediaStreamError itself",
        params=("self",),
    ),
    Reliance(
        "fastrtc", _WEBRTC, "handle_offer", _GUARD, _GUARD_RETIRE, ("self", "body", "set_outputs")
    ),
    Reliance("fastrtc", _WEBRTC, "offer", _GUARD, _GUARD_RETIRE, ("self", "body")),
    Reliance("fastrtc", _WEBRTC, "quit_output_stream", _GUARD, _GUARD_RETIRE, ("self", "body")),
    Reliance("fastrtc", _WEBRTC, "set_input", _GUARD, _GUARD_RETIRE, ("self", "webrtc_id", "args")),
    Reliance(
        "fastrtc",
        _WEBRTC,
        "set_input_gradio",
        _GUARD,
        _GUARD_RETIRE,
        ("self", "webrtc_data", "args"),
    ),
    Reliance(
        "fastrtc",
        _WEBRTC,
        "set_input_on_submit",
        _GUARD,
        _GUARD_RETIRE,
        ("self", "webrtc_data", "args"),
    ),
    Reliance(
        "fastrtc",
        _WEBRTC,
        "set_additional_outputs",
        "outputs for a closed connection are dropped (fastrtc keeps an entry per id for ever)",
        "fastrtc removing a connection's additional_outputs entry at clean-up",
        ("self", "webrtc_id"),
    ),
    Reliance(
        "fastrtc",
        _WEBRTC,
        "clean_up",
        "frees the connection's outputs and schedules a garbage collection",
        "as above",
        ("self", "webrtc_id"),
    ),
]

# The methods of a WebRTC component the guard may replace (all public, none meant to be).
COMPONENT_METHODS = (
    "offer",
    "quit_output_stream",
    "set_input_gradio",
    "set_input_on_submit",
    "set_additional_outputs",
    "clean_up",
)


def replace_component_methods(component, **methods: Callable) -> None:
    """Replace methods of one ``WebRTC`` instance (a subclass would not be found by Gradio)."""
    unknown = set(methods) - set(COMPONENT_METHODS)
    if unknown:
        raise ValueError(f"not a replaceable WebRTC method: {sorted(unknown)}")
    for name, method in methods.items():
        setattr(component, name, method)


def cached_resampler(handler, make: Callable):
    """The handler's input resampler, made by ``make()`` on the first frame."""
    if handler._resampler is None:
        handler._resampler = make()
    return handler._resampler


def set_handler_loop(handler, loop) -> None:
    """The event loop fastrtc's ``handler.loop`` returns (fastrtc sets it in its start_up)."""
    handler._loop = loop


def set_clear_queue(handler, clear: Callable | None) -> None:
    """What ``handler.clear_queue`` calls: fastrtc sets it to empty its playback queue."""
    handler._clear_queue = clear


def drop_handler_wrappers(handler) -> None:
    """Break the cycles fastrtc leaves on a closed handler, so it is freed without the cyclic GC.

    fastrtc stores its queue-clearing callback, and error-handling wrappers of
    the handler's own bound methods (``handler.emit = webrtc_error_handler(handler.emit)``),
    on the instance.
    """
    handler._clear_queue = None
    for name in ("emit", "receive", "start_up", "shutdown"):
        handler.__dict__.pop(name, None)


def end_streams_quietly() -> None:
    """A stream the server ends ends without a traceback in the log.

    fastrtc 0.0.34's ``AudioCallback.recv`` answers its ``CloseStream`` (and any
    error it swallows) by stopping the track and returning None; aiortc's sender
    then tries to encode None and logs the AttributeError with its traceback,
    once per session the server ends (idle, browser gone). Raising
    ``MediaStreamError`` is how an aiortc track says it has ended, and the
    sender stops quietly. Retire this when fastrtc raises it itself.
    Process-wide and idempotent.
    """
    from aiortc.mediastreams import MediaStreamError
    from fastrtc.tracks import AudioCallback

    if getattr(AudioCallback, "_voice_lab_quiet_end", False):
        return
    original = AudioCallback.recv

    @functools.wraps(original)
    async def recv(self):
        frame = await original(self)
        if frame is None:
            raise MediaStreamError
        return frame

    AudioCallback.recv = recv  # type: ignore[method-assign]
    AudioCallback._voice_lab_quiet_end = True  # type: ignore[attr-defined]
