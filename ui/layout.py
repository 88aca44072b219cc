"""The Gradio page: talk on the left; the conversation and latency dashboard beside it."""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import gradio as gr
from fastrtc import WebRTC

from pipeline.config import (
    admission_secs,
    max_sessions,
    max_sessions_per_client,
    trust_forwarded_for,
)
from pipeline.providers.local.models import shared_models
from pipeline.session import SessionRecords, VoiceSession
from pipeline.transport import tighten_audio_jitter_buffer
from pipeline.weights import local_llm
from ui import export, heard, render, server, state, views
from ui.ab import build_ab_panel, wire_ab_panel
from ui.relay import TurnRelay, relay_wanted
from ui.settings import build_settings_panel, config_from_settings
from ui.webrtc_guard import WebRTCGuard, webrtc_id_of

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXPORT_DIR = Path(tempfile.gettempdir()) / "voice-lab-exports"
# Requests waiting in Gradio's queue beyond this are turned away ("queue full").
QUEUE_MAX_SIZE = 64
# What Gradio accepts as an upload at all (a session file is the only upload).
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
# Gradio's upload cache: files older than an hour are deleted every 10 minutes.
DELETE_CACHE = (600, 3600)


def _browser_rtc(relay: TurnRelay | None):
    """The page's ICE configuration: none locally, the relay's credentials on a Space.

    A plain function, not a bound method: fastrtc calls it per page load only if
    ``inspect.isfunction`` says so.
    """
    if relay is None:
        return None

    def current_relay() -> dict:
        return relay.browser_configuration()

    return current_relay


def _relay_notice(relay: TurnRelay | None) -> str:
    notice = relay.notice() if relay is not None else ""
    return f'<div class="relay-health" role="status">{notice}</div>' if notice else ""


def build_ui(session: VoiceSession | None = None) -> gr.Blocks:
    records = session.records if session is not None else SessionRecords()
    session = session or VoiceSession(
        reduce=state.reduce,
        initial_state=state.initial_state,
        settings_from_inputs=config_from_settings,
        records=records,
    )
    relay = TurnRelay().start() if relay_wanted() else None
    # Every call's microphone audio reaches the pipeline 60 ms sooner (see its docstring).
    tighten_audio_jitter_buffer()
    css = (ASSETS / "style.css").read_text()
    head = f"<script>{(ASSETS / 'mic_errors.js').read_text()}</script>"
    head += f"<script>{(ASSETS / 'heard_latency.js').read_text()}</script>"
    idle = state.SessionState(status="idle")

    with gr.Blocks(
        title="Voice Lab",
        css=css,
        head=head,
        theme=gr.themes.Soft(),
        delete_cache=DELETE_CACHE,
    ) as demo:
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
                settings = build_settings_panel()
            with gr.Column(scale=3, min_width=420):
                shown |= {view.name: view.component(idle) for view in views.in_column("dashboard")}
                ab_panel = build_ab_panel()
                with gr.Row():
                    export_button = gr.Button(
                        "Export session (JSON)", size="sm", elem_id="export-button"
                    )
                    replay_button = gr.UploadButton(
                        "Replay a session file", file_types=[".json"], size="sm"
                    )
                export_file = gr.File(label="Session file", visible=False, elem_id="export-file")
                # Where assets/heard_latency.js puts each figure the page measured:
                # in the page (so its script can set it), never shown.
                heard_input = gr.Textbox(
                    elem_id="heard-latency-input", visible="hidden", show_label=False
                )

        # The views' components, in the order views.render_all/render_update return them.
        outputs = [shown[view.name] for view in views.VIEWS]
        status = shown["status"]
        guard = WebRTCGuard(
            audio,
            per_client=max_sessions_per_client(),
            admission_secs=admission_secs(),
            trust_forwarded_for=trust_forwarded_for(),
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
            concurrency_limit=max_sessions(),
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
        wire_ab_panel(ab_panel, audio, settings, guard)

        def export_current(connection, request: gr.Request) -> dict:
            connection_id = webrtc_id_of(connection)
            # Only the page that made the connection may export it.
            owned = guard.owns(connection_id, request.session_hash)
            events = records.get(connection_id) if owned else None
            if not events:
                raise gr.Error("Nothing to export yet: press Record and talk first.")
            return gr.update(value=str(export.write_export(events, EXPORT_DIR)), visible=True)

        def replay_file(file) -> tuple:
            # Anyone can upload anything: load_replay bounds the work and
            # checks every field; its message is plain text and quotes nothing.
            try:
                return views.render_all(export.load_replay(getattr(file, "name", file)))
            except export.ReplayError as e:
                raise gr.Error(
                    str(e), title="Could not replay that file", print_exception=False
                ) from None

        export_button.click(export_current, inputs=[audio], outputs=[export_file])
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
    for fn in demo.fns.values():
        # Every endpoint here serves this page only; none is a public API.
        fn.show_api = False
    return demo.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=4)


def launch(demo: gr.Blocks, **options) -> None:
    """Serve the page as a public Space should: bounded uploads, no API page, no tracebacks.

    Gradio 5.50 builds its FastAPI app with ``debug=True`` (``App.create_app``),
    so any exception in a route (an unknown component id, say) answers the
    client with a full traceback. Turning it off once the server runs makes
    Starlette rebuild its error middleware without it.
    """
    # Everything allocated so far lives as long as the process: out of the cyclic
    # GC's way, a collection then costs ~1-2 ms instead of ~300 ms (see webrtc_guard).
    gc.collect()
    gc.freeze()
    demo.launch(
        show_api=False,
        max_file_size=MAX_UPLOAD_BYTES,
        prevent_thread_lock=True,
        app_kwargs=server.app_kwargs(),
        **options,
    )
    demo.server_app.debug = False
    demo.server_app.middleware_stack = None
    demo.block_thread()
