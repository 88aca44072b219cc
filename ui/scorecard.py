"""The Scorecard view: each stack's latest suite results, as ``python -m bench evals`` wrote them.

The results files live in the repository (``evals/results/<stack>.json``), one
per stack, each naming when and on what machine it was measured and whether
real providers answered. Only those are shown: a run against the test fakes
measures the pipeline's latency, not a stack's quality, and never appears here
whatever file it sits in. Read once per process (the files change when
someone runs the suite and commits the result, not while the app runs).
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from html import escape
from pathlib import Path

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent.parent / "evals" / "results"
# A results file is read only up to this size: it is data, not a way to stall the page.
MAX_FILE_BYTES = 2 * 1024 * 1024
# Failed expectations listed per stack.
MAX_FAILURES_SHOWN = 6


def results_path(stack: str, folder: Path = RESULTS_DIR) -> Path:
    return folder / f"{stack}.json"


def load_runs(folder: Path = RESULTS_DIR) -> list[dict]:
    """Every readable results file in ``folder``, newest measurement first."""
    runs = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("too large")
            run = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(run, dict) or not isinstance(run.get("scorecard"), dict):
                raise ValueError("not a results file")
        except (OSError, ValueError) as e:
            log.warning("skipping the results file %s: %s", path.name, e)
            continue
        runs.append(run)
    return sorted(runs, key=lambda r: str(r.get("measured_at", "")), reverse=True)


def quality_runs(runs: list[dict]) -> list[dict]:
    """The runs that speak for a stack's quality (real providers answered), latest per stack."""
    latest: dict[str, dict] = {}
    for run in runs:
        if run.get("real_providers") is True:
            latest.setdefault(str(run.get("stack")), run)
    return list(latest.values())


@lru_cache(maxsize=1)
def shown_runs() -> tuple[dict, ...]:
    return tuple(quality_runs(load_runs()))


def _ms(value) -> str:
    return "–" if not isinstance(value, int | float) else f"{value * 1000:.0f} ms"


def _percent(value) -> str:
    return "–" if not isinstance(value, int | float) else f"{value * 100:.0f} %"


def _usd(value) -> str:
    from pipeline.pricing import format_usd

    return "–" if not isinstance(value, int | float) else format_usd(value)


def _failures(card: dict) -> str:
    failures = card.get("failed_expectations") or []
    if not failures:
        return ""
    items = "".join(
        f"<li><code>{escape(str(f.get('scenario', '')))}</code>: "
        f"{escape(str(f.get('expectation', '')))}"
        + (f" — the bot said “{escape(str(f['bot_said']))}”" if f.get("bot_said") else "")
        + "</li>"
        for f in failures[:MAX_FAILURES_SHOWN]
    )
    more = len(failures) - MAX_FAILURES_SHOWN
    if more > 0:
        items += f"<li>… and {more} more</li>"
    return (
        f"<details><summary>{len(failures)} failed expectation"
        f"{'s' if len(failures) != 1 else ''}</summary><ul>{items}</ul></details>"
    )


def _row(run: dict) -> str:
    card = run.get("scorecard") or {}
    machine = run.get("machine") or {}
    load = machine.get("loadavg_before") or []
    where = escape(str(machine.get("name", "?")))
    if machine.get("cpus"):
        where += f", {int(machine['cpus'])} CPUs"
    if load:
        where += f", load {float(load[0]):.1f}"
    if run.get("budget_scale", 1) != 1:
        where += f", latency budgets ×{float(run['budget_scale']):g}"
    providers = " · ".join(escape(str(v)) for v in (run.get("providers") or {}).values())
    judged = card.get("not_judged", 0)
    unanswered = card.get("turns_unanswered")
    v2v = card.get("v2v") or {}
    cells = [
        f"<strong>{escape(str(run.get('stack', '?')))}</strong><br><small>{providers}</small>",
        f"{_percent(card.get('pass_rate'))}<br><small>{card.get('passed', 0)} of "
        f"{card.get('scenarios', 0)} passed"
        + (f", {judged} not judged" if judged else "")
        + "</small>",
        f"{_ms(v2v.get('median'))} / {_ms(v2v.get('p95'))}"
        + (
            f"<br><small>{unanswered} of {card.get('turns', '?')} turns unanswered</small>"
            if unanswered
            else ""
        ),
        _ms((card.get("heard_minus_server") or {}).get("median")),
        _usd(card.get("cost_per_scenario_usd")),
        f"{escape(str(run.get('measured_at', '?'))[:10])}<br><small>{where}</small>",
        "yes" if run.get("real_providers") else "no (test fakes)",
    ]
    row = "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"
    failures = _failures(card)
    if failures:
        row += f'<tr class="scorecard-failures"><td colspan="{len(cells)}">{failures}</td></tr>'
    return row


def render_scorecard(runs: tuple[dict, ...] | list[dict]) -> str:
    """One row per stack: pass rate beside latency and cost, with when, where and who answered."""
    if not runs:
        return (
            '<div class="scorecard"><h4>Scorecard</h4><p>No suite results yet: run '
            "<code>python -m bench evals --stack local</code>.</p></div>"
        )
    return (
        '<div class="scorecard"><h4>Scorecard: spoken scenarios per stack</h4>'
        '<div class="scorecard-table"><table><tr><th>Stack</th><th>Pass rate</th>'
        "<th>V2V p50 / p95</th><th>Heard − server</th><th>Cost / scenario</th>"
        "<th>Measured</th><th>Real providers</th></tr>"
        + "".join(_row(run) for run in runs)
        + "</table></div><p><small>From <code>python -m bench evals</code> (pipecat's eval "
        "harness on the same pipeline you talk to). Expectations that need an LLM judge count "
        "as not passed when no judge was configured.</small></p></div>"
    )


def render_current(_state=None) -> str:
    """The view's drawing: the latest real results (the session's state plays no part)."""
    return render_scorecard(shown_runs())
