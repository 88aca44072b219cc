"""A stack's scorecard from its scenario results, and the run record the results files hold.

The scorecard puts quality beside latency and cost, all from the same runs:
the pass rate, pooled voice-to-voice p50/p95 over every turn of every
scenario, heard-minus-server where the harness heard the bot's audio, the
mean cost of a scenario, and each failed expectation with the bot's words.

Scenario outcomes: ``passed`` (every expectation met), ``failed`` (one or more
deterministic checks failed: text, tool calls, timing), ``not judged`` (the
only unmet expectations are ``eval:`` criteria and no judge was configured:
never counted as passed), ``skipped`` (could not run: a file that does not
load, a simulation without an LLM to play the caller).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

from bench.evals.run import FAILED, NOT_JUDGED, PASSED, SKIPPED, ScenarioResult
from bench.evals.stacks import Stack
from bench.figures import summarize

FORMAT = 1


def machine(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict:
    """Where the run was measured: ``VOICE_LAB_MACHINE_NAME`` (default: the host name) and load."""
    return {
        "name": os.environ.get("VOICE_LAB_MACHINE_NAME", "").strip() or platform.node(),
        "cpus": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }


def failed_expectations(results: list[ScenarioResult]) -> list[dict]:
    """Every failed (not "not judged") expectation, with what the bot said in that turn."""
    return [
        {
            "scenario": r.name,
            "turn": f.turn,
            "expectation": f.criterion,
            "kind": f.kind,
            "reason": f.reason,
            "bot_said": f.bot_said,
        }
        for r in results
        for f in r.failed
    ]


def scorecard(results: list[ScenarioResult], wall_seconds: float) -> dict:
    count = {v: sum(1 for r in results if r.verdict == v) for v in (PASSED, FAILED, NOT_JUDGED)}
    skipped = sum(1 for r in results if r.verdict == SKIPPED)
    costs = [r.cost_usd for r in results if r.verdict != SKIPPED]
    turns = [t for r in results for t in r.turns if t.status != "not_run"]
    return {
        "scenarios": len(results),
        "passed": count[PASSED],
        "failed": count[FAILED],
        "not_judged": count[NOT_JUDGED],
        "skipped": skipped,
        "pass_rate": count[PASSED] / len(results) if results else None,
        "turns": len(turns),
        "turns_unanswered": sum(1 for t in turns if not t.answered),
        "v2v": summarize([v for r in results for v in r.v2v]),
        "heard_minus_server": summarize([v for r in results for v in r.heard_minus_server]),
        "cost_per_scenario_usd": statistics.fmean(costs) if costs else None,
        "wall_seconds": round(wall_seconds, 1),
        "failed_expectations": failed_expectations(results),
    }


def run_record(
    stack: Stack,
    providers: dict[str, str],
    suite: Path,
    results: list[ScenarioResult],
    *,
    wall_seconds: float,
    load_before: tuple[float, ...],
    judge: str | None,
    budget_scale: float = 1.0,
) -> dict:
    """Everything one stack's run says: what ``--json`` and the results files hold."""
    return {
        "format": FORMAT,
        "stack": stack.name,
        "description": stack.description,
        "real_providers": stack.real,
        "providers": providers,
        "suite": suite.name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(load_before, os.getloadavg()),
        "judge": judge,
        "budget_scale": budget_scale,
        "scorecard": scorecard(results, wall_seconds),
        "scenarios": [r.as_dict() for r in results],
    }


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")


def format_run(run: dict) -> str:
    """The text summary printed after a stack's run."""
    card = run["scorecard"]
    v2v, heard = card["v2v"], card["heard_minus_server"]

    def ms(value) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    machine_ = run["machine"]
    lines = [
        f"stack {run['stack']} ({'real providers' if run['real_providers'] else 'TEST FAKES'}): "
        f"{card['passed']}/{card['scenarios']} passed"
        + (f" ({card['pass_rate'] * 100:.0f} %)" if card["pass_rate"] is not None else "")
        + f", {card['failed']} failed, {card['not_judged']} not judged, {card['skipped']} skipped",
        f"  voice-to-voice   p50 {ms(v2v['median'])}  p95 {ms(v2v['p95'])}  n {v2v['n']} "
        f"({card['turns_unanswered']} of {card['turns']} turns unanswered)",
        f"  heard - server   p50 {ms(heard['median'])}  p95 {ms(heard['p95'])}  n {heard['n']}",
        "  cost / scenario  "
        + (
            "-"
            if card["cost_per_scenario_usd"] is None
            else f"${card['cost_per_scenario_usd']:.6f}"
        ),
        f"  wall {card['wall_seconds']:.0f} s, load {machine_['loadavg_before'][0]:.2f} -> "
        f"{machine_['loadavg_after'][0]:.2f} ({machine_['cpus']} CPUs), judge: "
        f"{run['judge'] or 'none (eval: criteria not judged)'}"
        + (f", latency budgets x{run['budget_scale']:g}" if run["budget_scale"] != 1 else ""),
    ]
    for scenario in run["scenarios"]:
        mark = {"passed": "ok  ", "failed": "FAIL", "not judged": "n/j ", "skipped": "skip"}
        lines.append(f"  {mark[scenario['verdict']]} {scenario['name']}")
        for f in scenario["failed"]:
            said = f" -- bot said: {f['bot_said']!r}" if f["bot_said"] else ""
            lines.append(f"         {f['criterion']}: {f['reason']}{said}")
        for f in scenario["not_judged"]:
            lines.append(f"         not judged: {f['criterion']}")
        if scenario["note"]:
            lines.append(f"         {scenario['note']}")
    return "\n".join(lines)
