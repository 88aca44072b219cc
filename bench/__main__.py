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

Against ``python app.py`` over WebRTC instead (aiortc clients, as the page):

    python -m bench webrtc --profile cloud-sim --sessions 3 --turns 3
    python -m bench startup
    python -m bench refusal --limit 2

The developer's provider keys are ignored: every stage is local unless the
profile says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
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
    parser.add_argument("--json", type=Path, help="write the full result here")
    parser.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    _add_webrtc_modes(parser)
    args = parser.parse_args(argv)
    if args.quick and args.mode is None:
        args.turns = QUICK_TURNS
    if args.mode in (None, "webrtc") and (args.sessions < 1 or args.turns < 1):
        parser.error("--sessions and --turns must be at least 1")
    if args.mode == "refusal" and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def _add_webrtc_modes(parser: argparse.ArgumentParser) -> None:
    """``webrtc``, ``startup`` and ``refusal``: ``python app.py`` measured over WebRTC."""
    modes = parser.add_subparsers(
        dest="mode",
        title="modes against python app.py over WebRTC (instead of the headless run)",
    )
    webrtc = modes.add_parser(
        "webrtc", help="aiortc clients ask spoken questions; the reply as heard, underruns"
    )
    webrtc.add_argument("--profile", choices=PROFILES, default="local")
    webrtc.add_argument("--sessions", type=int, default=1, help="concurrent visitors")
    webrtc.add_argument("--turns", type=int, default=3, help="questions per visitor")
    webrtc.add_argument("--no-dashboard", action="store_true", help="never render the page")
    startup = modes.add_parser("startup", help="seconds from launch to models ready and HTTP 200")
    refusal = modes.add_parser(
        "refusal", help="a visitor beyond VOICE_LAB_MAX_SESSIONS is refused; the others answered"
    )
    refusal.add_argument("--limit", type=int, default=1, help="VOICE_LAB_MAX_SESSIONS")
    for mode in (webrtc, startup, refusal):
        mode.add_argument("--json", type=Path, help="write the full result here")


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
        format_scenario,
        measure_app_startup,
        run_webrtc_scenario,
    )

    if args.mode == "webrtc":
        result = await run_webrtc_scenario(
            args.profile, args.sessions, args.turns, dashboard=not args.no_dashboard
        )
        print(format_scenario(result))
    elif args.mode == "startup":
        result = await measure_app_startup()
        print(json.dumps(result, indent=2))
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
    clear_provider_variables()
    if args.mode is not None:
        _write_json(args.json, await _webrtc_mode(args))
        return 0
    from bench.cloudsim import published_latencies
    from bench.report import format_summary, targets, write_html
    from bench.scenarios import run_sessions
    from pipeline.providers.local.models import shared_models
    from pipeline.runtime import prepare_runtime

    load_before = os.getloadavg()
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
        write_html(result, args.html)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
