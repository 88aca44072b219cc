"""One browser connection = one :class:`VoiceSession`, the fastrtc handler.

fastrtc copies the handler per connection (``copy()``), calls ``start_up()``
once the connection is live, ``receive()`` for every incoming audio frame,
pulls ``emit()`` for outgoing audio and UI updates, and ``shutdown()`` when the
connection closes. The session owns that lifecycle and the browser-liveness
watchdog, and composes the parts that do the rest: a
:class:`~pipeline.switcher.GenerationSwitcher` runs the pipeline generations
(provider changes between turns), a :class:`~pipeline.publisher.StatePublisher`
turns events into view updates, and a :class:`~pipeline.server_keys.ServerKeyBudget`
limits the time on the server's own API keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
from fastrtc import AsyncStreamHandler, CloseStream
from fastrtc.utils import AdditionalOutputs, current_context

from pipeline import events as ev
from pipeline import same_words
from pipeline.builder import build_generation
from pipeline.compat.fastrtc import cached_resampler, drop_handler_wrappers, set_handler_loop
from pipeline.config import SessionConfig
from pipeline.providers.local.models import LocalModels, LocalStageUnavailable, shared_models
from pipeline.publisher import StatePublisher
from pipeline.same_words import UtteranceRecorder
from pipeline.server_keys import SERVER_KEYS, ServerKeyBudget, ServerKeyLedger
from pipeline.switcher import Generation, GenerationSwitcher
from pipeline.telemetry import SessionTelemetry, metrics, refused
from pipeline.transport import SessionOutbox, microphone_resampler

log = logging.getLogger(__name__)

S = TypeVar("S")
SHUTDOWN_TIMEOUT_SECS = 2.0
# How long the page gets to send its settings when a connection starts.
SETTINGS_WAIT_SECS = 3.0
EVENT_LOG_LIMIT = 5000


def _weakly(owner, method: Callable) -> Callable:
    """``method`` bound to ``owner`` through a weak reference (a no-op once it is gone)."""
    ref = weakref.ref(owner)

    def call(*args):
        target = ref()
        if target is not None:
            return method(target, *args)
        return None

    return call


class SessionRecords:
    """The event logs and traces of the most recent sessions, by WebRTC connection id, for export.

    Only the log and the trace's spans are kept (not the pipeline), bounded to
    ``limit`` sessions (traces, which are larger, to ``trace_limit``). A
    connection id is random and known only to the browser that made it, so a
    visitor can only export their own session.
    """

    def __init__(self, limit: int = 64, trace_limit: int = 16):
        self._limit, self._trace_limit = limit, trace_limit
        self._logs: OrderedDict[str, deque[ev.Event]] = OrderedDict()
        self._traces: OrderedDict[str, SessionTelemetry] = OrderedDict()

    def add(
        self, connection_id: str, log_: deque[ev.Event], telemetry: SessionTelemetry | None = None
    ) -> None:
        self._logs[connection_id] = log_
        while len(self._logs) > self._limit:
            self._logs.popitem(last=False)
        if telemetry is not None and telemetry.tracing:
            self._traces[connection_id] = telemetry
            while len(self._traces) > self._trace_limit:
                self._traces.popitem(last=False)

    def get(self, connection_id: str) -> list[ev.Event] | None:
        found = self._logs.get(connection_id)
        return None if found is None else list(found)

    def trace(self, connection_id: str) -> dict | None:
        """The session's spans as OTLP/JSON (None: no such session, or it was not traced)."""
        telemetry = self._traces.get(connection_id)
        return None if telemetry is None or telemetry.trace is None else telemetry.trace.otlp_json()


class VoiceSession(AsyncStreamHandler, Generic[S]):
    """The fastrtc <-> pipecat bridge for one connection.

    ``reduce`` and ``initial_state`` come from the UI layer: the publisher folds
    the session's events with them. The pipeline package never imports the UI.
    """

    def __init__(
        self,
        *,
        reduce: Callable[[S, ev.Event], S],
        initial_state: Callable[[], S],
        config_factory: Callable[[], SessionConfig] = SessionConfig,
        settings_from_inputs: Callable[..., SessionConfig] | None = None,
        models: LocalModels | None = None,
        publish_interval: float = 0.1,
        records: SessionRecords | None = None,
        server_keys: ServerKeyLedger = SERVER_KEYS,
    ):
        config = config_factory()
        super().__init__(
            expected_layout="mono",
            output_sample_rate=config.output_sample_rate,
            input_sample_rate=config.input_sample_rate,
        )
        self._reduce, self._initial_state = reduce, initial_state
        self._config_factory, self._settings_from_inputs = config_factory, settings_from_inputs
        self._models = models = models or shared_models()
        self._publish_interval = publish_interval
        self.records = records if records is not None else SessionRecords()
        self.events: deque[ev.Event] = deque(maxlen=EVENT_LOG_LIMIT)
        # The user's last turn as heard, for "Same words, other stack" (pipeline.same_words).
        self.utterance = UtteranceRecorder()
        # A "same words, other stack" run is under way (one at a time per call).
        self.comparing = False
        self.outbox = outbox = SessionOutbox()
        self.finished = asyncio.Event()
        # Weak: the outbox, the pipeline and the session's parts must not keep a closed
        # session alive (pipecat's processors form cycles that only the cyclic GC frees).
        self.outbox.clear_downstream = _weakly(self, VoiceSession._clear_fastrtc_queue)
        report = _weakly(self, lambda session, event: session.report(event))
        self.publisher = StatePublisher(reduce, initial_state, outbox, publish_interval)
        self.ui_delays = self.publisher.ui_delays  # event -> fastrtc, for the benchmark
        # Metrics and spans, made from the events as the dashboard is (pipeline.telemetry).
        self.telemetry = telemetry = SessionTelemetry()
        self.switcher = GenerationSwitcher(
            config,
            lambda settings, context: build_generation(
                settings, models, outbox, report, context, telemetry
            ),
            report,
            session_id=telemetry.session_id,
        )
        self._server_keys = server_keys
        self.key_budget = ServerKeyBudget(
            report, ledger=server_keys, on_spent=metrics.server_key_seconds
        )
        self._closed = self._started = self._heard_audio = False
        self._last_audio_at: float | None = None
        # fastrtc's own attribute (its connection sets it), typed there as always set.
        try:
            set_handler_loop(self, asyncio.get_running_loop())
        except RuntimeError:
            set_handler_loop(self, None)

    def copy(self) -> VoiceSession[S]:
        return VoiceSession(
            reduce=self._reduce,
            initial_state=self._initial_state,
            config_factory=self._config_factory,
            settings_from_inputs=self._settings_from_inputs,
            models=self._models,
            publish_interval=self._publish_interval,
            records=self.records,
            server_keys=self._server_keys,
        )

    @property
    def config(self) -> SessionConfig:
        return self.switcher.config

    async def compare_last_utterance(
        self, choices, keys, models, timeout: float = same_words.AB_TIMEOUT_SECS
    ) -> tuple[same_words.Utterance, same_words.HeadlessResult]:
        """ "Same words, other stack": the user's last utterance through ``choices``.

        Raises ``same_words.ABRefused`` with the reason in the visitor's words.
        """
        return await same_words.replay_last_utterance(self, choices, keys, models, timeout)

    @property
    def generation(self) -> Generation | None:
        """The pipeline generation that runs now."""
        return self.switcher.generation

    @property
    def state(self) -> S:
        return self.publisher.state

    @property
    def heard_audio(self) -> bool:
        """The browser has sent audio: a live connection, not one holding a slot idly."""
        return self._heard_audio

    def bill_server_keys_to(self, visitor: tuple[str, ...]) -> None:
        """The visitor this connection's time on the server's keys belongs to (before it starts).

        ``visitor`` names them as the web layer knows them (address, page): a
        reconnect, a reload or another tab starts with what they have left.
        """
        self.key_budget.bill_to(visitor)

    def report(self, event: ev.Event) -> None:
        """Called by observers: cheap and synchronous, never blocks the pipeline."""
        self.events.append(event)
        self.telemetry.observe(event)
        self.utterance.observe(event)
        if self.config.dashboard:
            self.publisher.add(event)

    def report_from_page(self, event: ev.Event) -> None:
        """An event the visitor's page measured (heard latency), from any thread.

        Logged and published like the pipeline's own, so it reaches the
        dashboard, the export and a replay.
        """
        self._call_soon(self.report, event)

    def snapshot(self) -> S:
        """The state the page shows once pending events are published (tests, benchmark)."""
        return self.publisher.snapshot()

    # -- fastrtc handler interface -------------------------------------------

    async def start_up(self) -> None:
        if self._started:
            # fastrtc starts the handler once per incoming audio track; the offer
            # check admits one, and a second start would build a second pipeline.
            log.warning("a second start of the same session ignored")
            return
        self._started = True
        set_handler_loop(self, asyncio.get_running_loop())
        self.telemetry.start()
        connection = current_context.get()
        if connection is not None:
            self.records.add(connection.webrtc_id, self.events, self.telemetry)
        if self.config.dashboard:
            self.publisher.start()
        watchdog = asyncio.create_task(self._watch_audio(), name="voice-lab-audio-watchdog")
        meter = asyncio.create_task(
            self.key_budget.meter(self.switcher.running_config, self.request_config),
            name="voice-lab-server-keys",
        )
        self.switcher.start()
        # A visitor back within the window starts with what is left of their time.
        self.request_config(self.config)
        try:
            await self._receive_page_settings()
            await self.switcher.run()
        except LocalStageUnavailable as e:
            log.warning("session refused: %s", e)
            refused("local_models_unavailable")
            self.report(ev.ErrorReported(time.time(), str(e), True))
        except Exception as e:
            log.exception("session failed")
            self.report(ev.ErrorReported(time.time(), f"The voice pipeline failed: {e}", True))
        finally:
            watchdog.cancel()
            meter.cancel()
            self.switcher.close()
            await self._finish("session ended")

    def set_args(self, args: list) -> None:
        """fastrtc hands over the page's inputs (providers, keys, knobs) on every change.

        Called from Gradio's worker thread. Deliberately not the base class's
        version, which logs the arguments, and so the visitor's keys, at debug level.
        """
        if self._settings_from_inputs is None or len(args) < 2:
            return
        try:
            config = self._settings_from_inputs(*args[1:])
        except ValueError as e:
            self._call_soon(self.report, ev.ErrorReported(time.time(), str(e)))
            return
        self._call_soon(self.request_config, config)
        self._call_soon(self.args_set.set)

    def _call_soon(self, fn, *args) -> None:
        loop = self.loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    def request_config(self, config: SessionConfig) -> None:
        """Use ``config`` from the next turn on (before the pipeline exists: from the start)."""
        self.switcher.request(self.key_budget.limit(config))

    async def _receive_page_settings(self) -> None:
        """Ask the page for its current settings (fastrtc's data channel) before building."""
        if self.channel is None or self.args_set.is_set():
            return
        try:
            await asyncio.wait_for(self.wait_for_args(), SETTINGS_WAIT_SECS)
        except TimeoutError:
            log.warning("the page sent no settings: starting with the defaults")

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        self._heard_audio = True
        if self.generation is None or self._closed:
            return
        self._last_audio_at = time.monotonic()
        sample_rate, samples = frame
        self.utterance.add(sample_rate, samples.reshape(-1))
        await self.switcher.push(sample_rate, np.ascontiguousarray(samples.reshape(-1), np.int16))

    def resample(self, frame):
        """fastrtc's input resampling, in 20 ms frames rather than its 60 ms (see the helper)."""
        resampler = cached_resampler(
            self,
            lambda: microphone_resampler(frame, self.input_sample_rate, self.expected_layout),
        )
        yield from resampler.resample(frame)

    async def emit(self):
        if self.finished.is_set() and self.outbox.empty():
            # fastrtc keeps polling until its connection notices the close;
            # don't let it spin.
            await asyncio.sleep(0.1)
            return None
        item = await self.outbox.get()
        if isinstance(item, AdditionalOutputs) and not self._page_listening():
            # The page has gone (or not yet come): fastrtc would announce the
            # update on a data channel that is not open, and log the failure.
            return None
        return item

    def _page_listening(self) -> bool:
        return getattr(self.channel, "readyState", "open") == "open"

    async def shutdown(self) -> None:
        """The browser left (tab closed, stop pressed): tear everything down."""
        log.info("client disconnected: closing its session")
        if not self.finished.is_set():
            await self.switcher.stop("client disconnected")
        if not self._started:
            return  # start_up never ran: nothing to wait for
        try:
            await asyncio.wait_for(self.finished.wait(), SHUTDOWN_TIMEOUT_SECS)
        except TimeoutError:
            log.warning("session did not finish within %.1fs", SHUTDOWN_TIMEOUT_SECS)
        await self.publisher.stop()
        if self.finished.is_set():
            self._drop_references()

    def _drop_references(self) -> None:
        """Break the cycles that would keep this closed session alive until the cyclic GC.

        Without this a closed connection's session, pipeline and peer connection
        stay in memory until Python's cyclic garbage collector next runs, which on
        a long-lived server can be many connections later.
        """
        self.switcher.drop_references()
        drop_handler_wrappers(self)

    # -- internals -----------------------------------------------------------

    async def _watch_audio(self) -> None:
        """End the session once a browser that was sending audio stops.

        A closed tab sends no goodbye that aiortc acts on: the connection
        would only fail after ~30 s of missed ICE consent checks, with the
        pipeline talking to nobody all the while. A live browser sends a
        frame every 20 ms even when the user is silent.
        """
        limit = self.config.audio_gone_secs
        while True:
            await asyncio.sleep(0.1)
            last = self._last_audio_at
            if last is not None and time.monotonic() - last > limit:
                log.info("no audio from the browser for %.1fs: closing its session", limit)
                await self.switcher.stop("browser gone")
                return

    def _clear_fastrtc_queue(self) -> None:
        if self.clear_queue is not None:
            self.clear_queue()

    async def _finish(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.report(ev.SessionEnded(time.time(), reason))
        self.utterance.clear()
        self.publisher.publish()
        await self.publisher.stop()
        self.outbox.put(CloseStream(reason))
        self.finished.set()
        log.info("session finished: %s", reason)
