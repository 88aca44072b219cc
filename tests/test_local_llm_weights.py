"""The local LLM's weights from the Hugging Face hub: downloaded, checked, cached, or not.

The hub is :class:`testkit.fakes.hub.FakeHub` on 127.0.0.1, answering the
requests ``huggingface_hub`` makes (``HF_ENDPOINT``), and the embedded
SmolLM2 GGUF stands in for a bigger model. Each run is a process of its own
(``huggingface_hub`` reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` on import):
``python app.py`` itself, or the start-up steps of ``app.py`` (select the
weights, build the page) without the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipeline.weights import EMBEDDED_LABEL, embedded_gguf, parse_choice
from testkit.app import ROOT, AppProcess, free_port
from testkit.fakes.hub import FakeHub
from testkit.loop import ThreadLoop

pytestmark = pytest.mark.slow

REPO, FILE = "stand-in/Bigger-Instruct-GGUF", "bigger-instruct-q4_k_m.gguf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHOICE = f"{REPO}/{FILE}@{COMMIT}"
LABEL = "bigger-instruct-q4_k_m"

# What app.py does before it serves, and what the page then shows.
START_UP = """
import json
from pipeline.providers.local import PROVIDER, select_llm
from ui.layout import build_ui
select_llm()
demo = build_ui()
page = {c["props"].get("elem_id"): c["props"].get("value") for c in demo.config["components"]}
print(json.dumps({"local_llm": page["local-llm"], "catalog": PROVIDER.catalogs["llm"].models}))
"""


def hub_environment(hub_url: str, home: Path, *, offline: bool = False) -> dict[str, str]:
    return {
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "VOICE_LAB_LOCAL_LLM": CHOICE,
    }


def start_up(env: dict[str, str]) -> dict:
    """The page as app.py builds it after choosing the weights, in a process with ``env``."""
    run = subprocess.run(
        [sys.executable, "-c", START_UP],
        cwd=ROOT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_choice_names_a_known_model_or_a_hub_file():
    assert parse_choice("qwen2.5-0.5b").pinned
    custom = parse_choice(CHOICE)
    assert (custom.repo_id, custom.filename, custom.revision) == (REPO, FILE, COMMIT)
    assert parse_choice(f"{REPO}/{FILE}").revision == "main"
    with pytest.raises(ValueError, match=r"owner/repo/file\.gguf"):
        parse_choice("not-a-model")


def test_the_app_runs_a_model_from_the_hub_and_the_page_names_it(tmp_path):
    """``python app.py`` fetches the pinned file (HEAD, then the CDN) and runs it (probe, warm)."""
    with ThreadLoop("fake-hub") as loop, loop.serving(FakeHub()) as hub:
        hub.add(REPO, FILE, embedded_gguf(), COMMIT)
        env = hub_environment(hub.base_url, tmp_path / "hf")
        with AppProcess(tmp_path / "app.log", extra_env=env) as app:
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(app.url + "/config", timeout=30) as response:
                config = json.loads(response.read())
            log = app.log_tail(20000)
        requests = list(hub.requests)
    page = {c["props"].get("elem_id"): c["props"].get("value") for c in config["components"]}
    assert f"<strong>{LABEL}</strong> (from the Hugging Face hub)" in page["local-llm"]
    assert "Could not" not in page["local-llm"]
    assert not page.get("local-health"), page.get("local-health")  # the LLM passed the probe
    assert f"local LLM: {LABEL} (hub)" in log
    # One HEAD on the hub, one GET of the bytes from the CDN (another host).
    assert [(method, path.split("/")[1]) for method, path, _host in requests] == [
        ("HEAD", REPO.split("/")[0]),
        ("GET", "cdn"),
    ]
    assert requests[0][2].startswith("127.0.0.1:") and requests[1][2].startswith("localhost:")
    blob = next((tmp_path / "hf" / "hub").glob("models--*/snapshots/*/*.gguf"))
    assert blob.resolve().stat().st_size == embedded_gguf().stat().st_size


@pytest.mark.parametrize("failure", ["server down", "bad checksum"])
def test_a_failed_download_falls_back_to_the_embedded_model_and_the_page_says_so(tmp_path, failure):
    if failure == "server down":
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        shown = start_up(hub_environment(url, tmp_path / "hf"))
    else:
        with (
            ThreadLoop("fake-hub") as loop,
            loop.serving(FakeHub(corrupt=True, scratch=tmp_path)) as hub,
        ):
            hub.add(REPO, FILE, embedded_gguf(), COMMIT)
            shown = start_up(hub_environment(hub.base_url, tmp_path / "hf"))
    page = shown["local_llm"]
    assert f"<strong>{EMBEDDED_LABEL}</strong> (embedded, offline)" in page
    assert f"Could not get {CHOICE} from the Hugging Face hub" in page
    assert f"using the embedded {EMBEDDED_LABEL} instead" in page
    assert shown["catalog"] == [EMBEDDED_LABEL]
    if failure == "bad checksum":
        assert "bad checksum" in page
        # The bad file is not kept: the next start downloads it again.
        assert not list((tmp_path / "hf" / "hub").glob("models--*/blobs/*"))


def test_a_pinned_download_is_reused_offline_without_a_request(tmp_path):
    with ThreadLoop("fake-hub") as loop, loop.serving(FakeHub()) as hub:
        hub.add(REPO, FILE, embedded_gguf(), COMMIT)
        first = start_up(hub_environment(hub.base_url, tmp_path / "hf"))
        asked = len(hub.requests)
        again = start_up(hub_environment(hub.base_url, tmp_path / "hf", offline=True))
        assert len(hub.requests) == asked == 2
    for shown in (first, again):
        assert f"<strong>{LABEL}</strong> (from the Hugging Face hub)" in shown["local_llm"]
        assert shown["catalog"] == [LABEL]
