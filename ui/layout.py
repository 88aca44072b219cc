"""The Gradio page: the WebRTC component, the conversation and the status line."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
from fastrtc import WebRTC

from pipeline.config import max_sessions
from pipeline.session import VoiceSession
from ui import render, state

ASSETS = Path(__file__).resolve().parent.parent / "assets"


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


def build_ui(session: VoiceSession | None = None) -> gr.Blocks:
    session = session or VoiceSession(reduce=state.reduce, initial_state=state.initial_state)
    browser_rtc, server_rtc = rtc_configurations()
    css = (ASSETS / "style.css").read_text()
    head = f"<script>{(ASSETS / 'mic_errors.js').read_text()}</script>"
    idle = state.SessionState(status="idle")

    with gr.Blocks(title="Voice Lab", css=css, head=head, theme=gr.themes.Soft()) as demo:
        gr.Markdown(
            "# Voice Lab\nTalk to a real-time voice agent and watch how it works. "
            "Press **Record**, allow the microphone, and speak; talk over the bot to interrupt it."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                audio = WebRTC(
                    label="Microphone and speaker",
                    modality="audio",
                    mode="send-receive",
                    rtc_configuration=browser_rtc,
                    server_rtc_configuration=server_rtc,
                    elem_id="voice",
                    button_labels={"start": "Record", "stop": "Stop"},
                )
                status = gr.HTML(render.render_status(idle), elem_id="status")
            with gr.Column(scale=2):
                conversation = gr.HTML(render.render_conversation(idle), elem_id="conversation")

        audio.stream(
            fn=session,
            inputs=[audio],
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
            _render_update,
            outputs=[conversation, status],
            concurrency_limit=None,
            show_progress="hidden",
            queue=True,
        )
    return demo


def _render_update(session_state: state.SessionState):
    return render.render(session_state)
