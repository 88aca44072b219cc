"""``python -m bench --profile local --turns 5 --json PATH``: measure the voice loop.

Prints a summary and, with ``--json``, writes every figure (per turn and
aggregated) with the machine load it was measured under.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

for name, value in {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "VOICE_LAB_LOG_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(name, value)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", choices=["local"], default="local")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one turn: a smoke run for CI")
    parser.add_argument(
        "--no-interim", action="store_true", help="no interim transcripts (comparison)"
    )
    parser.add_argument(
        "--no-dashboard", action="store_true", help="observers and UI updates off (comparison)"
    )
    parser.add_argument("--json", type=Path, help="write the full result here")
    return parser.parse_args(argv)


def format_summary(result: dict) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    v2v, first = result["voice_to_voice"], result["first_audio"]
    delay, cost = result["ui_event_delay"], result["observer_cost_us"]
    dashboard = "on" if result["dashboard"] else "off"
    lines = [
        f"profile {result['profile']}: {len(result['turns'])} turns, dashboard {dashboard}, "
        f"start-up {result['startup_seconds']:.1f} s",
        f"voice-to-voice  median {ms(v2v['median'])}  p95 {ms(v2v['p95'])}  max {ms(v2v['max'])}",
        f"first audio out median {ms(first['median'])}  p95 {ms(first['p95'])}",
    ]
    if result["dashboard"]:
        lines.append(
            f"UI event delay  median {ms(delay['median'])}  p95 {ms(delay['p95'])}; observer "
            f"{cost['median']:.1f} us/frame median, p95 {cost['p95']:.1f} us "
            f"over {cost['n']} pushes"
        )
    for label, figures in result["contributions"].items():
        lines.append(f"  {label:<22} median {ms(figures['median'])}  p95 {ms(figures['p95'])}")
    machine = result["machine"]
    lines.append(
        f"peak RSS {result['peak_rss_mb']:.0f} MB, CPU {result['cpu_seconds']:.1f} s "
        f"over {result['wall_seconds']:.1f} s, load avg before "
        f"{machine['loadavg_before'][0]:.2f} after {machine['loadavg_after'][0]:.2f}"
    )
    return "\n".join(lines)


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from bench.voice_loop import run_local
    from pipeline.config import SessionConfig
    from pipeline.models import shared_models
    from pipeline.runtime import prepare_runtime
    from pipeline.session import VoiceSession
    from ui import state

    startup = prepare_runtime()
    models = shared_models()
    turns = 1 if args.quick else args.turns

    def session_factory() -> VoiceSession:
        return VoiceSession(
            reduce=state.reduce,
            initial_state=state.initial_state,
            models=models,
            config_factory=lambda: SessionConfig(
                dashboard=not args.no_dashboard,
                interim_every_secs=0 if args.no_interim else SessionConfig.interim_every_secs,
            ),
        )

    result = await run_local(
        turns, models=models, session_factory=session_factory, dashboard=not args.no_dashboard
    )
    result["startup_seconds"] = startup
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(format_summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
