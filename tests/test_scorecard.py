"""The Scorecard: results files in, one row per stack out (the page's view and the HTML report).

Made-up results files here; the real runs that write them are in test_evals.py.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from bench.evals.run import load_folder
from bench.report import write_scorecard_html
from ui import scorecard


def run(stack: str, real: bool, measured_at: str, passed: int = 1, **card) -> dict:
    return {
        "format": 1,
        "stack": stack,
        "real_providers": real,
        "providers": {"stt": f"{stack} stt", "llm": f"{stack} llm", "tts": f"{stack} tts"},
        "measured_at": measured_at,
        "machine": {"name": "box-7", "cpus": 2, "loadavg_before": [0.4, 0.3, 0.2]},
        "judge": None,
        "scorecard": {
            "scenarios": 2,
            "passed": passed,
            "failed": 2 - passed,
            "not_judged": 0,
            "pass_rate": passed / 2,
            "v2v": {"median": 0.812, "p95": 1.4, "n": 3},
            "heard_minus_server": {"median": 0.05, "p95": 0.08, "n": 3},
            "cost_per_scenario_usd": 0.0012,
            "failed_expectations": [
                {
                    "scenario": "fact_largest_ocean",
                    "expectation": "tts_response contains 'Pacific'",
                    "bot_said": "The largest ocean is <b>the Atlantic</b>.",
                }
            ]
            if passed < 2
            else [],
            **card,
        },
        "scenarios": [],
    }


def write(folder: Path, name: str, data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(data if isinstance(data, str) else json.dumps(data))


def test_runs_against_the_fakes_are_never_shown_as_a_stacks_quality(tmp_path):
    write(tmp_path, "local.json", run("local", True, "2026-12-01T10:00:00Z"))
    write(tmp_path, "cloud-sim.json", run("cloud-sim", False, "2026-12-02T10:00:00Z", passed=2))
    write(tmp_path, "cloud.json", run("cloud", True, "2026-12-03T09:00:00Z", passed=2))
    write(tmp_path, "cloud-old.json", run("cloud", True, "2026-11-03T09:00:00Z", passed=0))
    write(tmp_path, "broken.json", "{not json")
    write(tmp_path, "list.json", [1, 2])
    shown = scorecard.quality_runs(scorecard.load_runs(tmp_path))
    assert [(r["stack"], r["measured_at"][:10]) for r in shown] == [
        ("cloud", "2026-12-03"),
        ("local", "2026-12-01"),
    ]
    page = scorecard.render_scorecard(shown)
    assert "cloud-sim" not in page and "test fakes" not in page
    assert page.count("<tr>") == 1 + 2  # the header and a row per stack
    assert page.count('<tr class="scorecard-failures">') == 1  # local's failed expectation


def test_a_row_names_date_machine_providers_and_what_failed_in_the_bots_words():
    page = scorecard.render_scorecard([run("local", True, "2026-12-01T10:00:00Z")])
    for shown in (
        "2026-12-01",
        "box-7, 2 CPUs, load 0.4",
        "local llm",
        "50 %",
        "1 of 2 passed",
        "812 ms / 1400 ms",
        "50 ms",
        "$0.0012",
        "fact_largest_ocean",
        "tts_response contains 'Pacific'",
    ):
        assert shown in html.unescape(page), shown
    # What the bot said is quoted as text, never as markup.
    assert "&lt;b&gt;the Atlantic&lt;/b&gt;" in page and "<b>" not in page


def test_no_results_yet_says_how_to_make_them():
    assert "python -m bench evals --stack local" in scorecard.render_scorecard([])


def test_the_report_puts_the_stacks_side_by_side(tmp_path):
    runs = [
        run("local", True, "2026-12-01T10:00:00Z"),
        run("cloud-sim", False, "2026-12-01T11:00:00Z", passed=2),
    ]
    write_scorecard_html(runs, tmp_path / "scorecard.html")
    page = (tmp_path / "scorecard.html").read_text()
    assert "Scorecard" in page and page.count("<td><strong>") == 2
    assert "no (test fakes)" in page  # the report shows fakes' latency, marked as such


def test_the_shipped_local_results_are_the_whole_suite_and_shown_on_the_page():
    suite = load_folder(Path(__file__).resolve().parent.parent / "evals")
    shipped = json.loads(scorecard.results_path("local").read_text())
    assert shipped["real_providers"] is True and shipped["stack"] == "local"
    assert sorted(s["name"] for s in shipped["scenarios"]) == sorted(i.name for i in suite)
    assert shipped["scorecard"]["scenarios"] == len(suite) >= 15
    shown = scorecard.quality_runs(scorecard.load_runs())
    assert "local" in [r["stack"] for r in shown]
    assert "local" in scorecard.render_current()
