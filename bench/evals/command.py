"""``python -m bench evals``: a scenario folder on one or more stacks, scored and written down.

    python -m bench evals --stack local --scenarios evals --json out.json
    python -m bench evals --stack local --stack cloud-sim --stack cloud-sim-streaming \\
        --scenarios evals --json out.json --html scorecard.html
    python -m bench evals --make-recordings --scenarios evals

For each stack: the bot (Voice Lab's pipeline behind pipecat's eval
transport) and the harness run in this process, one scenario at a time.
``--json`` gets every stack's run (a result per scenario, the scorecard);
``--html`` the benchmark report's scorecard section, one row per stack. A
run of the whole repository suite on a stack where real providers answered
also replaces that stack's file in ``evals/results/`` (what the page's
Scorecard shows); runs against the test fakes never do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

from bench.evals.stacks import STACKS

REPOSITORY_SUITE = Path(__file__).resolve().parents[2] / "evals"


def add_parser(modes) -> None:
    evals = modes.add_parser(
        "evals",
        help="spoken scenarios (pipecat's eval format) scored per stack with pipecat's harness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evals.add_argument(
        "--stack",
        action="append",
        choices=tuple(STACKS),
        help="the stack to score (repeat for several; default: local)",
    )
    evals.add_argument("--scenarios", type=Path, default=REPOSITORY_SUITE, help="folder of *.yaml")
    evals.add_argument("--only", help="comma-separated scenario file names (without .yaml)")
    evals.add_argument("--json", type=Path, help="write every stack's results here")
    evals.add_argument("--html", type=Path, help="write the scorecard report here")
    evals.add_argument(
        "--record",
        type=Path,
        help="keep each conversation's audio here (WAV; by default it is recorded, for the "
        "heard-minus-server figure, and thrown away)",
    )
    evals.add_argument(
        "--results-dir",
        type=Path,
        help="where each real stack's latest results go "
        "(default: evals/results/ for a whole run of the repository's suite)",
    )
    evals.add_argument("--no-judge", action="store_true", help="leave eval: criteria unjudged")
    evals.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        help="multiply the scenarios' latency budgets (within_ms) by this (tests on shared CI)",
    )
    evals.add_argument(
        "--make-recordings",
        action="store_true",
        help="write the missing audio: files from their turns' text (Piper), then exit",
    )


def _results_dir(args: argparse.Namespace) -> Path | None:
    """Where real runs are kept: as asked, else evals/results for a whole run of the suite."""
    from ui.scorecard import RESULTS_DIR

    if args.results_dir is not None:
        return args.results_dir
    whole_suite = args.scenarios.resolve() == REPOSITORY_SUITE and not args.only
    return RESULTS_DIR if whole_suite else None


async def run_evals(args: argparse.Namespace) -> int:
    from pipeline.providers.registry import keys_from_environment
    from testkit.env import clear_provider_variables

    if args.make_recordings:
        from bench.evals.recordings import make_missing

        for path in make_missing(args.scenarios):
            print(f"wrote {path}")
        return 0
    from bench.evals.harness import judge_settings

    # Read before clearing: the real cloud stacks and a Groq judge use the keys;
    # nothing else may switch to a provider because a key happens to be set.
    server_keys = keys_from_environment()
    judge = None if args.no_judge else judge_settings(server_keys.get("groq"))
    clear_provider_variables()

    from bench.evals.scorecard import format_run, write
    from bench.report import write_scorecard_html
    from pipeline.providers.local import select_llm
    from pipeline.runtime import prepare_runtime
    from ui.scorecard import load_runs, results_path

    select_llm()  # VOICE_LAB_LOCAL_LLM, from the hub cache (the benchmark stays offline)
    prepare_runtime()
    runs = []
    for name in args.stack or ["local"]:
        run = await run_stack(STACKS[name], args, server_keys, judge)
        print(format_run(run))
        runs.append(run)
        keep = _results_dir(args)
        if keep is not None and run["real_providers"] and run["budget_scale"] == 1:
            write(results_path(run["stack"], keep), run)
    if args.json:
        write(args.json, {"runs": runs})
    if args.html:
        others = [r for r in load_runs() if r["stack"] not in {run["stack"] for run in runs}]
        write_scorecard_html(runs + others, args.html)
    return 0


async def run_stack(stack, args: argparse.Namespace, server_keys, judge) -> dict:
    """One stack over the folder: its run record (see :func:`bench.evals.scorecard.run_record`)."""
    from bench.evals import stacks
    from bench.evals.bot import EvalBot
    from bench.evals.run import SuiteRunner, load_folder, recordings_of, scale_budgets
    from bench.evals.scorecard import run_record
    from pipeline.providers.local.models import shared_models

    only = [n.strip() for n in args.only.split(",")] if args.only else None
    loaded = load_folder(args.scenarios, only)
    if not loaded:
        raise SystemExit(f"no scenarios in {args.scenarios}")
    scale_budgets(loaded, args.budget_scale)
    models = shared_models()
    load_before = os.getloadavg()
    started = time.monotonic()
    results = []
    async with contextlib.AsyncExitStack() as resources:
        # The harness receives the bot's audio only when it records (or transcribes) it:
        # recording is how it hears each reply, for the heard-minus-server figure.
        record_dir = args.record or Path(resources.enter_context(tempfile.TemporaryDirectory()))
        config = await resources.enter_async_context(
            stacks.serving(stack, server_keys, recordings_of(loaded))
        )
        providers = {stage: choice.label for stage, choice in config().choices().items()}
        bot = await resources.enter_async_context(EvalBot(config, models))
        runner = SuiteRunner(bot, models, judge=judge, record_dir=record_dir)
        for item in loaded:
            result = await runner.run(item)
            print(f"  {result.verdict:<10} {result.name} ({result.seconds:.1f} s)", flush=True)
            results.append(result)
    return run_record(
        stack,
        providers,
        args.scenarios,
        results,
        wall_seconds=time.monotonic() - started,
        load_before=load_before,
        judge=judge.label if judge else None,
        budget_scale=args.budget_scale,
    )
