"""Voice Lab: talk to a real-time voice agent in the browser and watch where the latency goes.

Run with ``python app.py`` (honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).
"""

import os

# Before gradio/onnxruntime/huggingface_hub are imported: nothing phones home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if __name__ == "__main__":
    # First, so that it runs while Gradio and pipecat are imported: a child
    # process tries each local model, and only those that survive are loaded here.
    from pipeline.probe import RuntimeProbe
    from pipeline.weights import install_missing_weights_on_a_space

    install_missing_weights_on_a_space()
    probe = RuntimeProbe.start()

    from pipeline.runtime import prepare_runtime
    from ui.layout import build_ui, launch

    prepare_runtime(probe)
    launch(build_ui())
