"""The Gradio page: talk on the left; the conversation and latency dashboard beside it."""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
from fastrtc import WebRTC

from pipeline.compat.aiortc import tighten_audio_jitter_buffer
from pipeline.compat.fastrtc import end_streams_quietly
from pipeline.compat.gradio import hide_tracebacks
from pipeline.config import SessionConfig
from pipeline.providers.local.models import shared_models
from pipeline.server_keys import ServerKeyLedger
from pipeline.server_settings import ServerSettings
from pipeline.session import SessionRecords, VoiceSession
from pipeline.weights import local_llm
from ui import (
    clients,
    export,
    heard,
    hostile,
    limits,
    markup,
    observability,
    render,
    server,
    state,
    views,
)
from ui.relay import TurnServerCredentials, relay_policy, relay_source
from ui.same_words_panel import ABPanel, build_ab_panel, wire_ab_panel
from ui.settings import build_settings_panel, config_from_settings
from ui.webrtc_guard import WebRTCGuard, webrtc_id_of

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXPORT_DIR = Path(tempfile.gettempdir()) / "voice-lab-exports"
# Gradio's upload cache: files older than 15 minutes are deleted every 5 minutes. A
# replay reads its file at once (and deletes it), a download follows its export within
# seconds; what stays is what an attacker left, counted against the cache's cap.
DELETE_CACHE = (300, 900)


def _browser_rtc(relay: TurnServerCredentials | None):
    """The page's ICE configuration: none locally, the relay's credentials on a Space.

    A plain function, not a bound method: fastrtc calls it per page load only if
    ``inspect.isfunction`` says so.
    """
    if relay is None:
        return None

    def current_relay() -> dict:
        return relay.browser_configuration()

    return current_relay


def _relay_notice(relay: TurnServerCredentials | None) -> str:
    notice = relay.notice() if relay is not None else ""
    return markup.render("relay_health.html", notice=notice) if notice else ""


def build_ui(
    session: VoiceSession | None = None, server_settings: ServerSettings | None = None
) -> gr.Blocks:
    """The page and its wiring; ``server_settings`` default to what the environment sets."""
    server_settings = server_settings or ServerSettings.from_environ()
    records = session.records if session is not None else SessionRecords()
    session = session or VoiceSession(
        reduce=state.reduce,
        initial_state=state.initial_state,
        config_factory=partial(SessionConfig.from_server, server_settings),
        settings_from_inputs=partial(config_from_settings, server=server_settings),
        records=records,
        server_keys=ServerKeyLedger.from_settings(server_settings),
    )
    source = relay_source(server_settings)
    relay = (
        TurnServerCredentials(source, policy=relay_policy(server_settings)).start()
        if source
        else None
    )
    observability.warn_if_closed()
    # Every call's microphone audio reaches the pipeline 60 ms sooner (see its docstring).
    tighten_audio_jitter_buffer()
    end_streams_quietly()
    css = (ASSETS / "style.css").read_text()
    head = f"<script>{(ASSETS / 'mic_errors.js').read_text()}</script>"
    head += f"<script>{(ASSETS / 'heard_latency.js').read_text()}</script>"
    head += f"<script>{(ASSETS / 'call_health.js').read_text()}</script>"
    idle = state.SessionState(status="idle")

    with gr.Blocks(
        title="Voice Lab",
        css=css,
        head=head,
        theme=gr.themes.Soft(),
        delete_cache=DELETE_CACHE,
    ) as demo:
        page = _lay_out_page(relay, idle, server_settings)
        guard = _wire_call(demo, page, session, relay, server_settings)
        _wire_files(demo, page, guard, records, server_settings)
    for fn in demo.fns.values():
        # Every endpoint here serves this page only; none is a public API.
        fn.show_api = False
    hostile.quiet_input_refusals(demo)
    # api_open=False: a queued event is reached through the queue only, never by a
    # direct POST to /gradio_api/run/<name> past its concurrency limit and the queue's caps.
    return demo.queue(max_size=server.QUEUE_MAX_SIZE, default_concurrency_limit=4, api_open=False)


@dataclass
class Page:
    """The page's components that events are wired to."""

    relay_health: gr.HTML
    audio: WebRTC
    # Each view's component by name (views.VIEWS), and the panels.
    shown: dict[str, gr.components.Component]
    settings: gr.State
    ab_panel: ABPanel
    export_button: gr.Button
    trace_button: gr.Button
    replay_button: gr.UploadButton
    export_file: gr.File
    trace_file: gr.File
    heard_input: gr.Textbox

    @property
    def outputs(self) -> list:
        """The views' components, in the order views.render_all/render_update return them."""
        return [self.shown[view.name] for view in views.VIEWS]


def _lay_out_page(
    relay: TurnServerCredentials | None, idle: state.SessionState, server_settings: ServerSettings
) -> Page:
    """Every component, in the current Blocks context; nothing wired yet."""
    gr.Markdown(
        "# Voice Lab\nTalk to a real-time voice agent and watch it think: your words as you "
        "speak, the reply as the LLM writes it, the sentence being spoken, and where every "
        "millisecond of each turn went. Click the microphone box, press **Record**, allow "
        "the microphone and speak; talk over the bot to interrupt it."
    )
    relay_health = gr.HTML(
        _relay_notice(relay), elem_id="relay-health", visible=bool(relay and relay.notice())
    )
    gr.HTML(render.render_local_llm(local_llm()), elem_id="local-llm")
    unavailable = dict(shared_models().unavailable)
    gr.HTML(
        render.render_local_health(unavailable),
        elem_id="local-health",
        visible=bool(unavailable),
    )
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            audio = WebRTC(
                label="Microphone and speaker",
                modality="audio",
                mode="send-receive",
                rtc_configuration=_browser_rtc(relay),
                # Locally no STUN/TURN server is contacted at all; on a Space
                # the relay's credentials replace this once fetched.
                server_rtc_configuration={"iceServers": []},
                elem_id="voice",
                button_labels={"start": "Record", "stop": "Stop"},
                # The default full-screen mode pins the widget over the
                # whole viewport, where the charts cover its Record button.
                full_screen=False,
            )
            shown = {view.name: view.component(idle) for view in views.in_column("talk")}
            settings = build_settings_panel(server_settings)
        with gr.Column(scale=3, min_width=420):
            shown |= {view.name: view.component(idle) for view in views.in_column("dashboard")}
            ab_panel = build_ab_panel()
            with gr.Row():
                export_button = gr.Button(
                    "Export session (JSON)", size="sm", elem_id="export-button"
                )
                trace_button = gr.Button(
                    "Download trace (OTLP JSON)", size="sm", elem_id="trace-button"
                )
                replay_button = gr.UploadButton(
                    "Replay a session file", file_types=[".json"], size="sm"
                )
            export_file = gr.File(label="Session file", visible=False, elem_id="export-file")
            trace_file = gr.File(
                label="Trace file: open it in Jaeger (Search > Upload) or send it to "
                "any OTLP/HTTP receiver",
                visible=False,
                elem_id="trace-file",
            )
            # Where assets/heard_latency.js puts each figure the page measured:
            # in the page (so its script can set it), never shown.
            heard_input = gr.Textbox(
                elem_id="heard-latency-input", visible="hidden", show_label=False
            )

    return Page(
        relay_health,
        audio,
        shown,
        settings,
        ab_panel,
        export_button,
        trace_button,
        replay_button,
        export_file,
        trace_file,
        heard_input,
    )


def _wire_call(
    demo: gr.Blocks,
    page: Page,
    session: VoiceSession,
    relay: TurnServerCredentials | None,
    server_settings: ServerSettings,
) -> WebRTCGuard:
    """The call: the guarded stream into ``session``, its status, the relay and the A/B panel."""
    audio, settings, relay_health = page.audio, page.settings, page.relay_health
    outputs = page.outputs
    status = page.shown["status"]
    guard = WebRTCGuard(
        audio,
        per_client=server_settings.per_client,
        admission_secs=server_settings.admission_secs,
        handshake_secs=server_settings.handshake_secs,
        offers_per_minute=server_settings.offers_per_minute,
        balancer_cookie=server_settings.balancer_cookie,
    )
    # Before ``stream()``: it wires the settings to the method it finds now.
    guard.install()
    if relay is not None:
        relay.listeners.append(
            lambda servers: setattr(
                audio, "server_rtc_configuration", WebRTC.convert_to_aiortc_format(servers)
            )
        )
        if relay.servers is not None:
            audio.server_rtc_configuration = WebRTC.convert_to_aiortc_format(relay.servers)
        demo.load(
            lambda: gr.update(value=_relay_notice(relay), visible=bool(relay.notice())),
            outputs=[relay_health],
            queue=False,
            show_api=False,
        )
    # The settings state is the stream's extra input: fastrtc hands every
    # change of it to this visitor's session (``VoiceSession.set_args``).
    audio.stream(
        fn=session,
        inputs=[audio, settings],
        outputs=[audio],
        concurrency_limit=server_settings.sessions,
    )
    # The session's own updates stop with the stream, so the page says
    # itself what pressing Record and Stop did.
    audio.start_recording(
        lambda: render.render_status(state.SessionState(status="connecting")),
        outputs=[status],
        queue=False,
    )
    audio.stop_recording(
        lambda: render.render_status(state.SessionState(status="ended")),
        outputs=[status],
        queue=False,
    )
    guard.on_additional_outputs(views.render_update, outputs)

    wire_ab_panel(page.ab_panel, audio, settings, guard)
    return guard


def _wire_files(
    demo: gr.Blocks,
    page: Page,
    guard: WebRTCGuard,
    records: SessionRecords,
    server_settings: ServerSettings,
) -> None:
    """Export, trace download and replay, and the heard latency the page reports."""
    kept = export.Retention(server_settings.export_max_files, server_settings.export_max_age_secs)
    audio, outputs = page.audio, page.outputs
    export_button, trace_button, replay_button = (
        page.export_button,
        page.trace_button,
        page.replay_button,
    )
    export_file, trace_file, heard_input = page.export_file, page.trace_file, page.heard_input

    def export_current(connection, request: gr.Request) -> dict:
        connection_id = webrtc_id_of(connection)
        # Only the page that made the connection may export it.
        if guard.owns(connection_id, request.session_hash):
            events = records.get(connection_id)
        else:
            events = None
        if not events:
            raise gr.Error(
                "Nothing to export yet: press Record and talk first.", print_exception=False
            )
        return gr.update(value=str(export.write_export(events, EXPORT_DIR, kept)), visible=True)

    def download_trace(connection, request: gr.Request) -> dict:
        connection_id = webrtc_id_of(connection)
        # As the export: only the page that made the connection may read its trace.
        session_hash = request.session_hash
        if not guard.owns(connection_id, session_hash) or not records.get(connection_id):
            raise gr.Error("No trace yet: press Record and talk first.", print_exception=False)
        otlp = records.trace(connection_id)
        if not otlp or not otlp.get("resourceSpans"):
            raise gr.Error(
                "This session has no trace: tracing is off on this server "
                "(VOICE_LAB_TRACE_DOWNLOAD=0, or OTEL_SDK_DISABLED) "
                "or its sampler left it out.",
                print_exception=False,
            )
        return gr.update(value=str(export.write_trace(otlp, EXPORT_DIR, kept)), visible=True)

    def replay_file(file) -> tuple:
        # Anyone can upload anything: load_replay bounds the work and
        # checks every field; its message is plain text and quotes nothing.
        path = getattr(file, "name", file)
        try:
            return views.render_all(export.load_replay(path))
        except export.ReplayError as e:
            raise gr.Error(
                str(e), title="Could not replay that file", print_exception=False
            ) from None
        finally:
            # Read once and done with, unless an identical upload still waits.
            if isinstance(path, str) and limits.PENDING_UPLOADS.release(path):
                export.discard_upload(path, Path(demo.GRADIO_CACHE))

    export_button.click(export_current, inputs=[audio], outputs=[export_file])
    trace_button.click(download_trace, inputs=[audio], outputs=[trace_file])
    heard_intake = heard.HeardIntake()

    def take_heard(raw, connection, request: gr.Request) -> None:
        # From the visitor's browser, so hostile: only the page that owns the
        # connection reaches its session, a few times a second at most, and
        # only a well-formed figure in range (heard.parse_heard).
        connection_id = webrtc_id_of(connection)
        if not guard.owns(connection_id, request.session_hash):
            return
        target = audio.handlers.get(connection_id)
        event = heard.parse_heard(raw, time.time())
        if isinstance(target, VoiceSession) and event and heard_intake.allow(connection_id):
            target.report_from_page(event)

    heard_input.input(take_heard, inputs=[heard_input, audio], queue=False)
    # Bounded cost per file, so no visitor's replay waits behind another's.
    replay_button.upload(
        replay_file, inputs=[replay_button], outputs=outputs, concurrency_limit=None
    )


def launch(demo: gr.Blocks, server_settings: ServerSettings | None = None, **options) -> None:
    """Serve the page as a public Space should: bounded uploads, no API page, no tracebacks.

    Who a client is is decided by ``ui.clients`` alone (uvicorn's own reading of
    ``X-Forwarded-For`` is turned off).

    Gradio 5.50 builds its FastAPI app with ``debug=True`` (``App.create_app``),
    so any exception in a route (an unknown component id, say) answers the
    client with a full traceback. Turning it off once the server runs makes
    Starlette rebuild its error middleware without it.

    The worker's health, its name on every response and HAProxy's agent-check
    come from :mod:`ui.server`, which reads how full the worker is from the
    page's WebRTC component.
    """
    voice = next(block for block in demo.blocks.values() if isinstance(block, WebRTC))
    server_settings = server_settings or ServerSettings.from_environ()
    status = server.WorkerStatus(voice, server_settings.worker)
    # Everything allocated so far lives as long as the process: out of the cyclic
    # GC's way, a collection then costs ~1-2 ms instead of ~300 ms (see webrtc_guard).
    gc.collect()
    gc.freeze()
    clients.keep_uvicorn_out_of_it()
    demo.launch(
        show_api=False,
        max_file_size=server.MAX_UPLOAD_BYTES,
        prevent_thread_lock=True,
        app_kwargs=server.app_kwargs(server_settings, status),
        **options,
    )
    hide_tracebacks(demo.server_app)
    server.serve_worker(status, server_settings)
    demo.block_thread()
