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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ui import markup

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


@dataclass(frozen=True)
class Failure:
    """A failed expectation, in the results file's words."""

    scenario: str
    expectation: str
    bot_said: str


@dataclass(frozen=True)
class ScorecardRow:
    """One stack's results as the table shows them: figures formatted, the file's text as text."""

    stack: str
    providers: list[str]
    pass_rate: str
    passed: object
    scenarios: object
    not_judged: object
    v2v: str
    unanswered: object
    turns: object
    heard_minus_server: str
    cost: str
    date: str
    where: str
    real: bool
    failures: list[Failure]


def _failures(card: dict) -> list[Failure]:
    return [
        Failure(
            str(f.get("scenario", "")),
            str(f.get("expectation", "")),
            str(f["bot_said"]) if f.get("bot_said") else "",
        )
        for f in card.get("failed_expectations") or []
    ]


def _where(machine: dict, run: dict) -> str:
    """The machine it was measured on, its load, and any scaling of the latency budgets."""
    load = machine.get("loadavg_before") or []
    where = str(machine.get("name", "?"))
    if machine.get("cpus"):
        where += f", {int(machine['cpus'])} CPUs"
    if load:
        where += f", load {float(load[0]):.1f}"
    if run.get("budget_scale", 1) != 1:
        where += f", latency budgets ×{float(run['budget_scale']):g}"
    return where


def _row(run: dict) -> ScorecardRow:
    card = run.get("scorecard") or {}
    v2v = card.get("v2v") or {}
    return ScorecardRow(
        stack=str(run.get("stack", "?")),
        providers=[str(v) for v in (run.get("providers") or {}).values()],
        pass_rate=_percent(card.get("pass_rate")),
        passed=card.get("passed", 0),
        scenarios=card.get("scenarios", 0),
        not_judged=card.get("not_judged", 0),
        v2v=f"{_ms(v2v.get('median'))} / {_ms(v2v.get('p95'))}",
        unanswered=card.get("turns_unanswered"),
        turns=card.get("turns", "?"),
        heard_minus_server=_ms((card.get("heard_minus_server") or {}).get("median")),
        cost=_usd(card.get("cost_per_scenario_usd")),
        date=str(run.get("measured_at", "?"))[:10],
        where=_where(run.get("machine") or {}, run),
        real=bool(run.get("real_providers")),
        failures=_failures(card),
    )


def render_scorecard(runs: tuple[dict, ...] | list[dict]) -> str:
    """One row per stack: pass rate beside latency and cost, with when, where and who answered."""
    return markup.render(
        "scorecard.html", rows=[_row(run) for run in runs], max_failures=MAX_FAILURES_SHOWN
    )


def render_current(_state=None) -> str:
    """The view's drawing: the latest real results (the session's state plays no part)."""
    return render_scorecard(shown_runs())
