"""Voice Lab: talk to a real-time voice agent in the browser and watch where the latency goes.

Run with ``python app.py`` (honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).
"""

import os

from pipeline.weights import hub_wanted

# Before gradio/onnxruntime/huggingface_hub are imported: nothing phones home, but
# for the local LLM's weights when they must come from the hub (pipeline/weights.py).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "0" if hub_wanted() else "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if __name__ == "__main__":
    import sys

    from pipeline.server_settings import ServerSettings, SettingsError

    # Read once, here: a wrong VOICE_LAB_* value stops the start, named, before
    # a minute goes on loading models.
    try:
        settings = ServerSettings.from_environ()
    except SettingsError as e:
        sys.exit(f"Voice Lab cannot start: {e}")

    from pipeline.providers.local import select_llm

    # The LLM's GGUF first (a download, on a Space), then the probe, so that it
    # runs while Gradio and pipecat are imported: a child process tries each
    # local model, and only those that survive are loaded here.
    select_llm()
    from pipeline.probe import RuntimeProbe

    probe = RuntimeProbe.start()

    from pipeline.runtime import prepare_runtime
    from ui.layout import build_ui, launch

    prepare_runtime(probe)
    launch(build_ui(server_settings=settings), settings)
