"""The Gradio page: talk on the left; the conversation and latency dashboard beside it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import gradio as gr
from fastrtc import WebRTC

from pipeline.config import max_sessions
from pipeline.models import shared_models
from pipeline.session import SessionRecords, VoiceSession
from ui import charts, export, render, state
from ui.settings import build_settings_panel, config_from_settings

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXPORT_DIR = Path(tempfile.gettempdir()) / "voice-lab-exports"


def rtc_configurations() -> tuple[dict | None, dict]:
    """(browser, server) ICE configuration.

    Locally no STUN/TURN server is contacted at all. On a Hugging Face Space
    (or with ``VOICE_LAB_TURN=cloudflare``) both sides get TURN credentials
    through fastrtc's Cloudflare helper, which needs ``HF_TOKEN`` (or the
    ``CLOUDFLARE_TURN_KEY_*`` variables).
    """
    wants_turn = os.environ.get("VOICE_LAB_TURN", "").lower() == "cloudflare" or (
        os.environ.get("SPACE_ID") and os.environ.get("HF_TOKEN")
    )
    if not wants_turn:
        return None, {"iceServers": []}
    from fastrtc import get_cloudflare_turn_credentials, get_cloudflare_turn_credentials_async

    return get_cloudflare_turn_credentials_async, get_cloudflare_turn_credentials(ttl=360_000)


def render_all(current: state.SessionState) -> tuple:
    """Every output, in the order the layout wires them."""
    return (
        *render_all_but_charts(current),
        charts.breakdown_figure(current),
        charts.ttfb_figure(current),
    )


def render_update(previous: state.SessionState | None, current: state.SessionState) -> tuple:
    """Like :func:`render_all`, but leaves the charts alone until a turn's figures are in."""
    if previous is None or previous.charts_version != current.charts_version:
        return render_all(current)
    return (*render_all_but_charts(current), gr.skip(), gr.skip())


def render_all_but_charts(current: state.SessionState) -> tuple:
    return (
        render.render_conversation(current),
        render.render_user_live(current),
        render.render_status(current),
        render.render_stats(current),
    )


def build_ui(session: VoiceSession | None = None) -> gr.Blocks:
    records = session.records if session is not None else SessionRecords()
    session = session or VoiceSession(
        reduce=state.reduce,
        initial_state=state.initial_state,
        settings_from_inputs=config_from_settings,
        records=records,
    )
    browser_rtc, server_rtc = rtc_configurations()
    css = (ASSETS / "style.css").read_text()
    head = f"<script>{(ASSETS / 'mic_errors.js').read_text()}</script>"
    idle = state.SessionState(status="idle")

    with gr.Blocks(title="Voice Lab", css=css, head=head, theme=gr.themes.Soft()) as demo:
        gr.Markdown(
            "# Voice Lab\nTalk to a real-time voice agent and watch it think: your words as you "
            "speak, the reply as the LLM writes it, the sentence being spoken, and where every "
            "millisecond of each turn went. Click the microphone box, press **Record**, allow "
            "the microphone and speak; talk over the bot to interrupt it."
        )
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
                    rtc_configuration=browser_rtc,
                    server_rtc_configuration=server_rtc,
                    elem_id="voice",
                    button_labels={"start": "Record", "stop": "Stop"},
                    # The default full-screen mode pins the widget over the
                    # whole viewport, where the charts cover its Record button.
                    full_screen=False,
                )
                status = gr.HTML(render.render_status(idle), elem_id="status")
                conversation = gr.HTML(render.render_conversation(idle), elem_id="conversation")
                user_live = gr.HTML(render.render_user_live(idle), elem_id="user-live")
                settings = build_settings_panel()
            with gr.Column(scale=3, min_width=420):
                stats = gr.HTML(render.render_stats(idle), elem_id="latency-stats")
                breakdown = gr.Plot(
                    charts.breakdown_figure(idle), elem_id="latency-breakdown", show_label=False
                )
                ttfb = gr.Plot(charts.ttfb_figure(idle), elem_id="ttfb-chart", show_label=False)
                with gr.Row():
                    export_button = gr.Button("Export session (JSON)", size="sm")
                    replay_button = gr.UploadButton(
                        "Replay a session file", file_types=[".json"], size="sm"
                    )
                export_file = gr.File(label="Session file", visible=False, elem_id="export-file")

        outputs = [conversation, user_live, status, stats, breakdown, ttfb]
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
        audio.on_additional_outputs(
            render_update,
            outputs=outputs,
            concurrency_limit=None,
            show_progress="hidden",
            queue=True,
        )

        def export_current(connection) -> dict:
            connection_id = getattr(connection, "webrtc_id", connection)
            events = records.get(connection_id) if connection_id else None
            if not events:
                raise gr.Error("Nothing to export yet: press Record and talk first.")
            return gr.update(value=str(export.write_export(events, EXPORT_DIR)), visible=True)

        def replay_file(file) -> tuple:
            try:
                data = json.loads(Path(file.name if hasattr(file, "name") else file).read_text())
                return render_all(export.replay(data))
            except (ValueError, KeyError, TypeError) as e:
                raise gr.Error(f"Could not replay that file: {e}") from e

        export_button.click(export_current, inputs=[audio], outputs=[export_file])
        replay_button.upload(replay_file, inputs=[replay_button], outputs=outputs)
    return demo
