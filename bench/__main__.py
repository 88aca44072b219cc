"""``python -m bench``: measure the voice loop, alone or with concurrent sessions.

    python -m bench --profile local --turns 6
    python -m bench --profile cloud-sim --sessions 20 --turns 3 --json r.json --html r.html
    python -m bench --profile local --sweep 1,2,3,4

``local`` runs the embedded models; ``cloud-sim`` runs the real Groq and
ElevenLabs pipecat services against in-process fakes with the providers'
published latencies; ``cloud-sim-streaming`` is cloud-sim with ElevenLabs'
streaming speech-to-text (Scribe realtime: partial transcripts while the user
speaks) instead of Groq's segmented Whisper. Prints a summary with the targets next to the
measurements; ``--json`` writes every figure (per turn, per session, pooled)
with the machine load it was measured under; ``--html`` a self-contained
report with charts.

Voice Lab beside a stock pipecat bot and fastrtc's own voice loop, same turns,
same run (see bench/peers):

    python -m bench --profile cloud-sim --peers --turns 6 --json peers.json --html peers.html

Against ``python app.py`` over WebRTC instead (aiortc clients, as the page):

    python -m bench webrtc --profile cloud-sim --sessions 3 --turns 3
    python -m bench startup
    python -m bench refusal --limit 2
    python -m bench telemetry --sessions 1 --turns 3   # tracing off/on/OTLP, /metrics scraped
    python -m bench abuse [--only lockout,queue]

Spoken scenarios (evals/, pipecat's eval format) scored per stack with
pipecat's eval harness (see bench/evals):

    python -m bench evals --stack local --scenarios evals --json evals.json

The developer's provider keys are ignored: every stage is local unless the
profile says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from testkit.env import apply_offline_env, clear_provider_variables

apply_offline_env()
os.environ.setdefault("VOICE_LAB_LOG_LEVEL", "WARNING")

PROFILES = ("local", "cloud-sim", "cloud-sim-streaming")

QUICK_TURNS = 2  # one question and the barge-in turn


def _levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("--sweep takes session counts such as 1,2,3,4")
    return levels


def _worker_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError("--workers takes counts such as 0 or 0,2")
    return counts


def _names(text: str) -> list[str]:
    from bench.abuse import SCENARIOS

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=PROFILES, default="local")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent sessions")
    parser.add_argument(
        "--turns", type=int, default=5, help="turns per session (the last one is a barge-in)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_TURNS} turns: the smallest meaningful run"
    )
    parser.add_argument(
        "--sweep",
        type=_levels,
        help="run at each of these concurrencies (e.g. 1,2,3,4) instead of --sessions",
    )
    parser.add_argument(
        "--baseline", type=Path, help="a 1-session result JSON to compare v2v p95 with"
    )
    parser.add_argument(
        "--no-interim", action="store_true", help="no interim transcripts (comparison)"
    )
    parser.add_argument(
        "--no-dashboard", action="store_true", help="observers and UI updates off (comparison)"
    )
    parser.add_argument(
        "--contend",
        type=int,
        default=0,
        metavar="N",
        help="N busy processes beside the sessions (a browser or a neighbour on the machine)",
    )
    parser.add_argument(
        "--webrtc-sessions", type=int, default=0, help="also run N sessions over real WebRTC"
    )
    parser.add_argument(
        "--startup", action="store_true", help="also measure the app's start-up to ready"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="race Voice Lab against a stock pipecat bot and fastrtc's ReplyOnPause, turn by turn",
    )
    parser.add_argument("--json", type=Path, help="write the full result here")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    parser.add_argument(
        "--url",
        help="aim the sessions at a running deployment over WebRTC instead (as webrtc --url)",
    )
    _add_webrtc_modes(parser)
    args = parser.parse_args(argv)
    if args.mode is None and args.url:
        args.mode, args.workers, args.baseline = "webrtc", [0], False
    if args.quick and args.mode is None:
        args.turns = QUICK_TURNS
    if args.mode in (None, "webrtc", "telemetry") and (args.sessions < 1 or args.turns < 1):
        parser.error("--sessions and --turns must be at least 1")
    if args.mode == "refusal" and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def _add_webrtc_modes(parser: argparse.ArgumentParser) -> None:
    """``webrtc``, ``startup``, ``refusal``, ``abuse``: ``python app.py`` measured over WebRTC."""
    modes = parser.add_subparsers(
        dest="mode",
        title="other modes (instead of the headless run): python app.py over WebRTC; evals",
    )
    webrtc = modes.add_parser(
        "webrtc", help="aiortc clients ask spoken questions; the reply as heard, underruns"
    )
    webrtc.add_argument("--profile", choices=PROFILES, default="local")
    webrtc.add_argument("--sessions", type=int, default=1, help="concurrent visitors")
    webrtc.add_argument("--turns", type=int, default=3, help="questions per visitor")
    webrtc.add_argument("--no-dashboard", action="store_true", help="never render the page")
    webrtc.add_argument(
        "--workers",
        type=_worker_counts,
        default=[0],
        help="0: one python app.py; N: python -m deploy with N workers behind HAProxy;"
        " a list (0,2) runs each in turn, same utterances, and compares them",
    )
    webrtc.add_argument(
        "--baseline",
        action="store_true",
        help="first, one session on one process: the single-session p95 to compare with",
    )
    webrtc.add_argument("--url", help="a running deployment to aim the sessions at (as it runs)")
    webrtc.add_argument(
        "--sweep", type=_levels, help="run at each of these concurrencies instead of --sessions"
    )
    startup = modes.add_parser("startup", help="seconds from launch to models ready and HTTP 200")
    refusal = modes.add_parser(
        "refusal", help="a visitor beyond VOICE_LAB_MAX_SESSIONS is refused; the others answered"
    )
    refusal.add_argument("--limit", type=int, default=1, help="VOICE_LAB_MAX_SESSIONS")
    telemetry = modes.add_parser(
        "telemetry",
        help="V2V and CPU per session: tracing off, in memory, exported; /metrics scraped",
    )
    telemetry.add_argument("--profile", choices=PROFILES, default="local")
    telemetry.add_argument("--sessions", type=int, default=1, help="concurrent visitors")
    telemetry.add_argument("--turns", type=int, default=3, help="questions per visitor")
    abuse = modes.add_parser(
        "abuse", help="one address attacks the app; a visitor is answered during and after"
    )
    abuse.add_argument(
        "--only", type=_names, help="comma-separated attacks (default: all; see bench/abuse.py)"
    )
    for mode in (webrtc, startup, refusal, telemetry, abuse):
        mode.add_argument("--json", type=Path, help="write the full result here")
    from bench.evals.command import add_parser

    add_parser(modes)


@contextlib.asynccontextmanager
async def profile_for(args: argparse.Namespace, models):
    """The sessions' factory and audio for the chosen profile (cloud-sim: with its fakes)."""
    from bench.scenarios import Profile
    from pipeline.config import SessionConfig
    from pipeline.session import VoiceSession
    from testkit.speech import speech_pcm
    from ui import state

    knobs = {
        "dashboard": not args.no_dashboard,
        "interim_every_secs": 0 if args.no_interim else SessionConfig.interim_every_secs,
    }

    def session(config_factory) -> VoiceSession:
        return VoiceSession(
            reduce=state.reduce,
            initial_state=state.initial_state,
            models=models,
            config_factory=config_factory,
        )

    if args.profile == "local":
        yield Profile(
            name="local",
            new_session=lambda _i: session(lambda: SessionConfig(**knobs)),
            say=lambda text, _key: speech_pcm(text),
            interim=not args.no_interim,
        )
        return

    from bench.cloudsim import CloudFakes, InjectedLatencies, Utterances

    utterances = Utterances()
    async with CloudFakes(utterances, streaming=args.profile == "cloud-sim-streaming") as fakes:
        yield Profile(
            name=args.profile,
            new_session=lambda i: session(lambda: fakes.session_config(i, **knobs)),
            say=lambda text, key: utterances.say(text, key, speech_pcm(text)),
            connections_opened=fakes.tts_connections_between,
            attribution=lambda: InjectedLatencies(fakes),
            interim=args.profile == "cloud-sim-streaming",  # Groq's Whisper is segmented
        )


@contextlib.contextmanager
def contending_processes(count: int):
    """``count`` processes spinning on a CPU each while the block runs (the CPU contended)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _sweep_entry(run: dict) -> dict:
    return {
        "sessions": run["sessions"],
        "v2v_median": run["voice_to_voice"]["median"],
        "v2v_p95": run["voice_to_voice"]["p95"],
        "v2v_n": run["voice_to_voice"]["n"],
        "pipeline_overhead_p95": run["pipeline_overhead"]["p95"],
        "underruns": run["underruns"]["count"],
        "underrun_seconds": run["underruns"]["gap_seconds"],
        "smart_turn_fallbacks": run["smart_turn_fallbacks"],
        "interim_words": run["interim_words"],
        "cpu_seconds_per_session": run["cpu_seconds_per_session"],
        "loop_busy": run["loop_busy"],
        "peak_rss_mb": run["peak_rss_mb"],
        "loadavg_before": run["loadavg_before"],
        "loadavg_after": run["loadavg_after"],
        "errors": len(run["errors"]),
    }


async def _optional_webrtc(args: argparse.Namespace) -> dict:
    """``--webrtc-sessions`` and ``--startup``: the WebRTC scenario and app start-up as well."""
    from bench.webrtc import measure_app_startup, run_webrtc_scenario

    extra = {}
    if args.webrtc_sessions > 0:
        extra["webrtc"] = await run_webrtc_scenario(
            profile=args.profile,
            sessions=args.webrtc_sessions,
            turns=args.turns,
            dashboard=not args.no_dashboard,
        )
    if args.startup:
        extra["app_startup"] = await measure_app_startup()
    return extra


async def _webrtc_mode(args: argparse.Namespace) -> dict:
    """One of the modes against ``python app.py``; prints its result and returns it."""
    from bench.webrtc import (
        check_refusal,
        compare_runs,
        format_comparison,
        format_scenario,
        measure_app_startup,
        run_webrtc_scenario,
    )

    if args.mode == "webrtc":
        runs = []
        plan = [(1, 0)] if args.baseline else []
        levels = args.sweep or [args.sessions]
        if args.url is None:
            plan += [(level, workers) for level in levels for workers in args.workers]
        else:
            plan = [(level, 0) for level in levels]
        for sessions, workers in plan:
            runs.append(
                await run_webrtc_scenario(
                    args.profile,
                    sessions,
                    args.turns,
                    dashboard=not args.no_dashboard,
                    workers=workers,
                    url=args.url,
                )
            )
            print(format_scenario(runs[-1]) + "\n", flush=True)
        result = runs[0] if len(runs) == 1 else {"runs": runs, "comparison": compare_runs(runs)}
        if len(runs) > 1:
            print(format_comparison(result["comparison"]))
    elif args.mode == "startup":
        result = await measure_app_startup()
        print(json.dumps(result, indent=2))
    elif args.mode == "telemetry":
        from bench.telemetry import format_telemetry, run_telemetry_cost

        result = await run_telemetry_cost(args.profile, args.sessions, args.turns)
        print(format_telemetry(result))
    elif args.mode == "abuse":
        from bench.abuse import run_abuse

        result = await run_abuse(args.only)
        load = result["machine"]
        print(
            f"load avg before {load['loadavg_before'][0]:.2f} after "
            f"{load['loadavg_after'][0]:.2f}; app log {result['app_log']}"
        )
    else:
        result = await check_refusal(args.limit)
        print(json.dumps(result, indent=2, default=str))
    return result


def _write_json(path: Path | None, result: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))


def _baseline_p95(args: argparse.Namespace, sweep: list[dict]) -> float | None:
    if args.baseline:
        return json.loads(args.baseline.read_text())["voice_to_voice"]["p95"]
    single = [level for level in sweep if level["sessions"] == 1] if args.sweep else []
    return single[0]["v2v_p95"] if single else None


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.mode == "evals":
        from bench.evals.command import run_evals

        return await run_evals(args)
    clear_provider_variables()
    if args.mode is not None:
        _write_json(args.json, await _webrtc_mode(args))
        return 0
    if args.peers:
        from bench.peers import peers_mode

        await peers_mode(args)
        return 0
    from bench.cloudsim import published_latencies
    from bench.report import format_summary, targets, write_html
    from bench.scenarios import run_sessions
    from pipeline.providers.local import select_llm
    from pipeline.providers.local.models import shared_models
    from pipeline.runtime import prepare_runtime

    load_before = os.getloadavg()
    select_llm()
    startup = prepare_runtime()
    models = shared_models()
    levels = args.sweep or [args.sessions]
    sweep: list[dict] = []
    with contending_processes(args.contend):
        async with profile_for(args, models) as profile:
            for level in levels:
                run = await run_sessions(profile, level, args.turns)
                sweep.append(_sweep_entry(run))

    result = {
        "profile": args.profile,
        "dashboard": not args.no_dashboard,
        "interim": not args.no_interim,
        "contending_processes": args.contend,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "startup_seconds": startup,
        "model_load_seconds": dataclasses.asdict(models.load_times),
        "provider_latencies": published_latencies() if args.profile != "local" else None,
        **run,  # the last (or only) level's figures
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }
    if args.sweep:
        result["sweep"] = sweep
    result.update(await _optional_webrtc(args))
    result["targets"] = targets(result, _baseline_p95(args, sweep))

    print(format_summary(result))
    _write_json(args.json, result)
    if args.html:
        from ui.scorecard import load_runs

        write_html(result, args.html, scorecards=load_runs())
    return 0


if __name__ == "__main__":
    from bench.lifecycle import run

    sys.exit(run(main(sys.argv[1:])))
