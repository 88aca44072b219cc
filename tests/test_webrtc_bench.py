"""The WebRTC benchmark against ``python app.py``: aiortc clients talk to it as the page does.

Run as CI runs it, ``python -m bench webrtc`` and ``python -m bench refusal``.
Timings are not asserted tightly (the machine is shared): a reply must be heard
and a refusal must come at once, not after a hang.
"""

import json

import pytest

from tests.test_bench import run_bench

pytestmark = pytest.mark.slow


def test_a_spoken_question_is_answered_over_webrtc(tmp_path):
    out = tmp_path / "webrtc.json"
    run = run_bench("webrtc", "--sessions", "1", "--turns", "1", "--json", str(out), timeout=400)
    assert "voice-to-voice (client)" in run.stdout
    result = json.loads(out.read_text())

    assert result["profile"] == "local"
    (session,) = result["per_session"]
    assert "error" not in session, session
    assert session["settings_sent"], "the session never asked for (or got) the page's settings"
    heard = result["voice_to_voice_client"]
    assert heard["n"] == 1 and result["unanswered_turns"] == 0
    # Question end to reply start, heard through Opus and two jitter buffers.
    assert 0.2 < heard["median"] < 10
    (turn,) = session["turns"]
    assert turn["reply_seconds"] > 0.3  # a spoken sentence, not a click
    assert turn["underruns"] >= 0 and turn["stalled_seconds"] >= 0
    assert "reply_arrivals" not in turn  # turned into figures, not dumped
    assert result["underruns"]["count"] >= 0 and result["underruns"]["reply_seconds"] > 0.3
    assert len(result["machine"]["loadavg_before"]) == 3


def test_a_visitor_over_the_limit_is_refused_at_once_and_the_others_carry_on(tmp_path):
    out = tmp_path / "refusal.json"
    run_bench("refusal", "--limit", "1", "--json", str(out), timeout=400)
    result = json.loads(out.read_text())

    extra = result["extra_visitor"]
    assert extra["refused"], extra
    assert extra["answer"]["status"] == "failed" and extra["answer"]["http_status"] == 200
    assert extra["answer"]["meta"] == {"error": "concurrency_limit_reached", "limit": 1}
    assert extra["page_message"].startswith("Too many concurrent connections")
    assert extra["seconds"] < 2 and extra["wall_seconds"] < 5  # an answer, not a hang

    (first,) = result["admitted"]
    assert first["voice_to_voice"] is not None, "the admitted visitor got no reply"
    assert 0.2 < first["voice_to_voice"] < 10
    assert first["reply_seconds"] > 0.3
    # Once the first visitor leaves, the refused one gets in.
    assert result["after_release"]["admitted"], result["after_release"]


def test_sessions_through_the_balancer_spread_over_the_workers_and_time_a_barge_in(tmp_path):
    """``--workers 2``: python -m deploy (HAProxy, two workers) on the cloud-sim fakes."""
    out = tmp_path / "deploy.json"
    run = run_bench(
        "webrtc",
        *("--profile", "cloud-sim", "--sessions", "2", "--turns", "2", "--workers", "2"),
        *("--json", str(out)),
        timeout=600,
    )
    assert "2 workers behind HAProxy" in run.stdout
    result = json.loads(out.read_text())

    assert result["sessions_per_worker"] == {"w1": 1, "w2": 1}, result["sessions_per_worker"]
    assert result["unanswered_turns"] == 0 and result["sessions_failed"] == 0
    assert result["providers"]["groq_requests"], "the workers did not use the (fake) cloud"
    stops = result["barge_in_stop"]
    assert stops["n"] == 2 and 0 < stops["median"] < 5, stops
    workers = result["cpu"]["servers"]
    assert set(workers) == {"w1", "w2"}
    assert all(w["cpu_seconds"] > 0 and w["peak_rss_mb"] > 100 for w in workers.values()), workers
