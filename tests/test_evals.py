"""Spoken scenarios scored by pipecat's eval harness, driven through the real pipeline.

``python -m bench evals`` as a user runs it (in this process, to share the warm
models): the repository's scenarios (evals/*.yaml, Piper recordings), the bot
being Voice Lab's pipeline behind pipecat's eval transport. On the simulated
cloud stacks the provider fakes answer what bench/evals/stacks.py tells them,
one answer wrong on purpose, so the pass/fail counts are known; on the local
stack SmolLM2 answers as it does, and what is asserted is what cannot vary.
A subset of the suite per stack keeps CI short; the benchmark runs it all.

On the fakes the latency budgets are doubled (``--budget-scale 2``): CI shares
two cores, and what these tests assert is what the bot said and did; the
benchmark measures the time (and runs the budgets as written).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import parse_args
from bench.evals.command import run_evals
from bench.evals.stacks import SUITE_ANSWERS
from testkit.fakes.groq import FakeGroq
from testkit.loop import ThreadLoop
from ui import scorecard

pytestmark = pytest.mark.slow

FAKES_BUDGETS = ("--budget-scale", "2")


async def evals(tmp_path: Path, *argv: str) -> list[dict]:
    """The runs ``python -m bench evals ...`` writes to --json (results folder: ``tmp_path``)."""
    out = tmp_path / "evals.json"
    args = parse_args(
        ["evals", *argv, "--json", str(out), "--results-dir", str(tmp_path / "results")]
    )
    assert await run_evals(args) == 0
    return json.loads(out.read_text())["runs"]


def by_name(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["scenarios"]}


def assert_scored(scenario: dict) -> None:
    """A scenario that ran: its turns' V2V measured where the bot answered, no pipeline error."""
    assert not scenario["errors"], scenario["errors"]
    for turn in scenario["turns"]:
        if turn["answered"]:
            assert turn["v2v"] and all(0.1 < v < 10 for v in turn["v2v"]), turn


async def test_the_fakes_make_a_known_scorecard_and_name_what_failed(models, tmp_path):
    """cloud-sim: right answers pass, the wrong one fails (and is quoted), tools, a refusal."""
    (run,) = await evals(
        tmp_path,
        "--stack",
        "cloud-sim",
        "--only",
        "fact_capital_of_france,fact_largest_ocean,orders_lookup_and_cancel,refuse_password",
        *FAKES_BUDGETS,
    )
    assert run["real_providers"] is False and run["stack"] == "cloud-sim"
    scenarios = by_name(run)
    assert {name: s["verdict"] for name, s in scenarios.items()} == {
        "fact_capital_of_france": "passed",
        "fact_largest_ocean": "failed",
        "orders_lookup_and_cancel": "passed",
        "refuse_password": "not judged",
    }
    for scenario in scenarios.values():
        assert_scored(scenario)

    # The fake answers the ocean wrongly on purpose: the scorecard names the
    # expectation and quotes what the bot said.
    (wrong,) = scenarios["fact_largest_ocean"]["failed"]
    assert wrong["kind"] == "text_mismatch" and "'Pacific'" in wrong["criterion"]
    assert "Atlantic" in wrong["bot_said"]
    card = run["scorecard"]
    assert (card["passed"], card["failed"], card["not_judged"]) == (2, 1, 1)
    assert card["pass_rate"] == 0.5
    assert [f["scenario"] for f in card["failed_expectations"]] == ["fact_largest_ocean"]

    # The cancellation ran through the demo tools once, to the end.
    orders = scenarios["orders_lookup_and_cancel"]
    assert [t["name"] for t in orders["tools"]] == ["lookup_order", "cancel_order"]
    assert all(t["ok"] for t in orders["tools"])
    assert "cancelled" in orders["tools"][1]["result"]

    # Without a judge, the refusal's eval: criterion is not judged, never passed.
    refusal = scenarios["refuse_password"]
    assert refusal["passed"] is False and not refusal["failed"]
    assert [f["kind"] for f in refusal["not_judged"]] == ["no_judge"]
    assert "declines" in refusal["not_judged"][0]["criterion"]

    # Latency and cost from the same runs; the harness heard the bot's replies.
    assert card["v2v"]["n"] >= 5 and 0.3 < card["v2v"]["median"] < 5
    assert card["heard_minus_server"]["n"] >= 1
    assert 0 <= card["heard_minus_server"]["median"] < 1.0
    assert card["cost_per_scenario_usd"] > 0
    # Against the fakes: never a stack's quality, so never in the results folder.
    assert not (tmp_path / "results").exists()


async def test_the_streaming_stack_stops_for_a_barge_in_and_answers_the_new_request(
    models, tmp_path
):
    (run,) = await evals(
        tmp_path,
        "--stack",
        "cloud-sim-streaming",
        "--only",
        "barge_in_changes_request,fact_capital_of_italy",
        *FAKES_BUDGETS,
    )
    scenarios = by_name(run)
    assert scenarios["fact_capital_of_italy"]["verdict"] == "passed"
    barge_in = scenarios["barge_in_changes_request"]
    assert_scored(barge_in)
    # Every deterministic check held (the interruption, "yellow"); the judged
    # criterion waits for a judge.
    assert barge_in["verdict"] == "not judged" and not barge_in["failed"]
    story, answer = barge_in["turns"]
    assert story["answered"] and story["bot_said"].startswith("Once upon a time")
    assert "yellow" in answer["bot_said"] and "upon a time" not in answer["bot_said"]


async def test_an_openai_compatible_judge_at_any_base_url_judges_the_criteria(
    models, tmp_path, monkeypatch
):
    """A judge on 127.0.0.1 (the Groq fake's OpenAI-compatible API) decides the eval: criterion."""
    asked: list[str] = []

    def judge(messages: list[dict]) -> str:
        said = json.dumps(messages)
        asked.append(said)
        if "You are a classifier" not in said:
            return "The reply declines to give the password."  # the explainer's reason
        verdict = "yes" if SUITE_ANSWERS["password"] in said else "no"
        other = "no" if verdict == "yes" else "yes"
        return json.dumps(
            {"verdict": {"choice": verdict, "probabilities": {verdict: 0.95, other: 0.05}}}
        )

    fake = FakeGroq(api_key="judge-key", reply=judge)
    with ThreadLoop("judge") as loop, loop.serving(fake):
        monkeypatch.setenv("VOICE_LAB_EVAL_JUDGE_URL", fake.base_url + "/openai/v1")
        monkeypatch.setenv("VOICE_LAB_EVAL_JUDGE_MODEL", "llama-3.3-70b-versatile")
        monkeypatch.setenv("VOICE_LAB_EVAL_JUDGE_KEY", "judge-key")
        (run,) = await evals(
            tmp_path, "--stack", "cloud-sim", "--only", "refuse_password", *FAKES_BUDGETS
        )
    (refusal,) = run["scenarios"]
    assert refusal["verdict"] == "passed", refusal
    assert run["judge"].startswith("llama-3.3-70b-versatile at http://127.0.0.1:")
    assert any("declines to give out a password" in a for a in asked)


async def test_the_local_stack_is_scored_for_real_and_its_results_file_is_kept(models, tmp_path):
    """SmolLM2 answers as it does; what cannot vary: it calls no tools, and the run is recorded."""
    (run,) = await evals(
        tmp_path, "--stack", "local", "--only", "fact_opposite_of_hot,orders_lookup_and_cancel"
    )
    assert run["real_providers"] is True
    assert run["providers"]["llm"] == "Local SmolLM2-135M-Instruct"
    scenarios = by_name(run)
    for scenario in scenarios.values():
        assert_scored(scenario)
        assert scenario["verdict"] in ("passed", "failed")
        assert scenario["cost_usd"] == 0
    # The local LLM is offered no tools: the lookup fails at its function call.
    orders = scenarios["orders_lookup_and_cancel"]
    first = orders["failed"][0]
    assert orders["verdict"] == "failed" and first["turn"] == 0
    assert first["kind"] == "missing_function_call" and "lookup_order" in first["criterion"]
    assert orders["tools"] == []
    assert [t["status"] for t in orders["turns"]] == ["failed", "not_run"]

    # A real stack's run is kept where the page reads it, and shown there.
    kept = scorecard.load_runs(tmp_path / "results")
    assert [r["stack"] for r in scorecard.quality_runs(kept)] == ["local"]
    assert kept[0]["scorecard"] == run["scorecard"]
    page = scorecard.render_scorecard(scorecard.quality_runs(kept))
    assert "local" in page and run["measured_at"][:10] in page
    assert run["machine"]["name"] in page


THEIR_SCENARIO = """
name: their_capital
user:
  modality: audio
  speech: {service: kokoro, voice: af_heart}
judge:
  modality: audio
  transcription: {service: moonshine}
scenarios:
  - name: paused_question
    turns:
      - user:
          - "So I was wondering,"
          - pause_ms: 400
          - "what is the capital of France?"
        expect:
          - event: user_transcription
            text_contains: capital
          - event: response
            within_ms: 25000
"""


async def test_a_scenario_we_did_not_write_runs_unchanged(models, tmp_path):
    """pipecat's own shape: a Kokoro voice with pauses, Moonshine for the bot's speech, no files.

    They run offline on ours: the user's words spoken by Piper, the bot's reply
    transcribed by the embedded Whisper (``response``, the harness's own ears).
    """
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "their_capital.yaml").write_text(THEIR_SCENARIO)
    (run,) = await evals(tmp_path, "--stack", "local", "--scenarios", str(folder))
    (theirs,) = run["scenarios"]
    assert theirs["name"] == "their_capital" and theirs["verdict"] == "passed", theirs
    (turn,) = theirs["turns"]
    assert turn["user"] == "So I was wondering, what is the capital of France?"
    assert turn["answered"] and turn["bot_said"] and turn["heard_minus_server"]
