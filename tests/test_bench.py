"""The benchmark runs end to end and reports every figure (values are read, never timed here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_a_complete_plausible_result(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--profile", "local", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "voice-to-voice" in run.stdout
    result = json.loads(out.read_text())

    assert result["profile"] == "local"
    (turn,) = result["turns"]
    assert "capital" in turn["transcript"].lower() and turn["reply"]
    for figure in ("voice_to_voice", "first_audio"):
        summary = result[figure]
        assert summary["n"] == 1
        assert 0.05 < summary["median"] <= summary["p95"] <= summary["max"] < 10
    assert {"transcription", "speech synthesis"} <= set(result["contributions"])
    assert result["dashboard"] is True
    assert 0 <= result["ui_event_delay"]["median"] <= result["ui_event_delay"]["p95"] < 5
    assert result["observer_cost_us"]["n"] > 100 and result["observer_cost_us"]["median"] > 0
    assert 100 < result["peak_rss_mb"] < 8000
    assert result["cpu_seconds"] > 0 and result["startup_seconds"] > 0
    assert len(result["machine"]["loadavg_before"]) == 3
