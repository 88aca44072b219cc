"""The benchmark runs end to end and reports every figure (values are read, never timed here).

The runs are subprocesses, ``python -m bench``, as CI runs them; the rules the
figures rest on (what an underrun is, when the bot stopped, which utterance a
transcription request carried) are checked on made-up input next to them, in
``bench/test_figures.py``.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (
    "voice_to_voice",
    "first_audio",
    "pipeline_overhead",
    "pipeline_overhead_without_fallback",
    "barge_in_stop",
    "ui_event_delay",
    "session_startup",
)


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m bench *args``, which must succeed."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def assert_summary(summary: dict, n: int | None = None, upper: float = 10) -> None:
    if n is not None:
        assert summary["n"] == n, summary
    assert 0 <= summary["median"] <= summary["p95"] <= summary["max"] < upper, summary


def assert_common_schema(result: dict, sessions: int, turns: int) -> None:
    """Every figure is present and plausible; counts match the sessions and turns run."""
    assert result["sessions"] == sessions and result["turns_per_session"] == turns
    assert len(result["turns"]) == sessions * turns
    assert not result["errors"], result["errors"]
    assert result["turns_completed"] == sessions * turns
    for figure in FIGURES:
        assert {"median", "p95", "max", "n"} <= set(result[figure]), figure
    assert_summary(result["voice_to_voice"], sessions * turns)
    assert result["voice_to_voice"]["median"] > 0.05
    assert_summary(result["first_audio"], sessions * turns)
    assert_summary(result["barge_in_stop"], sessions, upper=3)  # one barge-in per session
    assert_summary(result["ui_event_delay"], upper=5)
    assert {"transcription", "speech synthesis", "endpointing wait"} <= set(result["contributions"])
    assert set(result["ttfb"]) == {"stt", "llm", "tts"}
    for stage in result["ttfb"].values():
        assert_summary(stage)
        assert stage["services"]
    assert result["underruns"]["count"] >= 0 and result["underruns"]["gap_seconds"] >= 0
    assert len(result["per_session"]) == sessions
    for session in result["per_session"]:
        assert_summary(session["voice_to_voice"], turns)
        assert session["startup_seconds"] > 0
    assert result["observer_cost_us"]["n"] > 100 and result["observer_cost_us"]["median"] > 0
    assert result["cpu_seconds"] > 0 and result["cpu_seconds_per_session"] > 0
    assert 100 < result["rss_baseline_mb"] <= result["peak_rss_mb"] < 8000
    assert result["startup_seconds"] > 0
    for load in ("loadavg_before", "loadavg_after"):
        assert len(result[load]) == 3 and len(result["machine"][load]) == 3
    assert result["machine"]["cpus"] >= 1
    assert result["targets"] and {t["status"] for t in result["targets"]} <= {
        "met",
        "missed",
        "n/a",
        "not measured",
    }
    spec = result["speculation"]
    assert {"started", "adopted", "discarded"} <= set(spec)
    # Every speculation that started ended one way or the other (a session's
    # last one may still be open when it closes).
    assert (
        spec["adopted"] + spec["discarded"]
        <= spec["started"]
        <= spec["adopted"] + spec["discarded"] + sessions
    )
    barge_ins = [t for t in result["turns"] if t["kind"] == "barge-in"]
    assert len(barge_ins) == sessions
    assert all("long story" in t["question"] and t["barge_in_stop"] >= 0 for t in barge_ins)


@pytest.mark.slow
def test_quick_local_benchmark_writes_a_complete_plausible_result(tmp_path):
    out = tmp_path / "bench.json"
    run = run_bench("--profile", "local", "--quick", "--json", str(out))
    assert "voice-to-voice" in run.stdout and "targets" in run.stdout
    result = json.loads(out.read_text())

    assert result["profile"] == "local" and result["dashboard"] is True
    assert_common_schema(result, sessions=1, turns=2)
    first = result["turns"][0]
    assert "capital" in first["transcript"].lower() and first["reply"]
    assert result["pipeline_overhead"]["n"] == 0  # only defined where latencies are injected
    assert {t["name"] for t in result["targets"]} == {"v2v median", "v2v p95"}


@pytest.mark.slow
def test_quick_cloud_sim_with_two_sessions_attributes_every_turn_and_writes_html(tmp_path):
    out, page = tmp_path / "bench.json", tmp_path / "report.html"
    run = run_bench(
        "--quick",
        "--profile",
        "cloud-sim",
        "--sessions",
        "2",
        "--json",
        str(out),
        "--html",
        str(page),
    )
    assert "pipeline overhead" in run.stdout
    result = json.loads(out.read_text())
    assert "speculation" in page.read_text()

    assert result["profile"] == "cloud-sim"
    assert_common_schema(result, sessions=2, turns=2)
    # The fakes answered with each session's own question, and every turn's
    # injected latencies were found, so its overhead is known.
    for turn in result["turns"]:
        assert turn["transcript"].rstrip(".?") in turn["question"]
        assert turn["reply"]
        assert all(0.05 < turn["injected"][stage] < 2 for stage in ("stt", "llm", "tts"))
        assert -0.2 < turn["pipeline_overhead"] < turn["voice_to_voice"]
    assert_summary(result["pipeline_overhead"], 4)
    ttfb_models = " ".join(s for stage in result["ttfb"].values() for s in stage["services"])
    for model in ("whisper-large-v3-turbo", "llama-3.1-8b-instant", "eleven_flash_v2_5"):
        assert model in ttfb_models
    assert result["provider_latencies"]["llm_ttft"] == {"median": 0.29, "p95": 0.36}
    assert [s["session"] for s in result["per_session"]] == [0, 1]

    text = page.read_text()
    assert "Plotly.newPlot" in text and len(text) > 1_000_000, "plotly.js is not inlined"
    assert not re.search(r"<script[^>]*\ssrc=", text), "the report loads a script from elsewhere"
    assert "Voice-to-voice per turn" in text and "Time to first byte" in text
    # Beside the latency: each stack's latest suite results (evals/results), one row each.
    assert '<div class="scorecard">' in text


@pytest.mark.slow
def test_peers_race_every_system_on_the_same_turns_and_report_them_side_by_side(tmp_path):
    out, page = tmp_path / "peers.json", tmp_path / "peers.html"
    run = run_bench(
        "--profile", "cloud-sim", "--peers", "--quick", "--json", str(out), "--html", str(page)
    )
    assert "ratio to Voice Lab" in run.stdout
    result = json.loads(out.read_text())

    assert result["mode"] == "peers" and result["profile"] == "cloud-sim"
    names = [p["name"] for p in result["peers"]]
    assert names == ["voice-lab", "voice-lab-serial", "pipecat", "fastrtc"]
    for peer in result["peers"]:
        assert not peer["errors"], (peer["name"], peer["errors"])
        assert_summary(peer["v2v"], 2)  # a question and the long one, both answered aloud
        assert peer["v2v"]["median"] > 0.3  # at least the injected STT + LLM + TTS latencies
        assert_summary(peer["barge_in"], 1, upper=5)  # every one of them can be interrupted
        assert peer["cpu"]["mean_per_turn"] > 0
        assert peer["follows"]
        assert set(peer["ratio_to_voice_lab"]) == {
            "v2v_median",
            "v2v_p95",
            "barge_in_median",
            "cpu_per_turn",
        }
    assert set(result["peers"][0]["ratio_to_voice_lab"].values()) == {1.0}
    # Interleaved: every system took turn 0 before any took turn 1.
    started = {(t["system"], t["index"]): t["started"] for t in result["turns"]}
    assert max(started[n, 0] for n in names) < min(started[n, 1] for n in names)
    assert len(result["machine"]["loadavg_before"]) == 3

    text = page.read_text()
    assert "side by side" in text and "Plotly.newPlot" in text
    assert all(name in text for name in names)
