"""How often speculation is kept, on plain questions and on a question with a pause in it.

    python -m bench.speculation --rounds 3 [--json out.json]

One local session (the embedded models) hears each utterance ``--rounds``
times with speculative turns on, then again with them off: the benchmark's
questions, and "I'd like to know" + a 0.5 s pause + "the capital of Spain"
(long enough for the VAD to stop: a reply speculated on the first half must
be dropped when the user goes on; Smart Turn may also judge the first half a
whole turn, which no setting of ours changes). Reports, per kind of utterance: speculations started,
adopted and discarded (by reason), reply tokens wasted, and voice-to-voice
median and p95 for both settings. The machine load is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections import Counter

import numpy as np

from testkit.env import apply_offline_env, clear_provider_variables

apply_offline_env()
os.environ.setdefault("VOICE_LAB_LOG_LEVEL", "WARNING")

PAUSED = ("I'd like to know", "the capital of Spain.")
PAUSE_SECS = 0.5
QUESTIONS = 5  # the benchmark's first five questions


async def run(speculative: bool, rounds: int, models) -> dict:
    from bench.scenarios import QUESTIONS as BENCH_QUESTIONS
    from pipeline.config import SessionConfig
    from pipeline.session import VoiceSession
    from testkit.driver import SessionDriver
    from testkit.speech import silence, speech_pcm
    from ui import state

    utterances = {
        "questions": [speech_pcm(q) for q in BENCH_QUESTIONS[:QUESTIONS]],
        "pause in the middle": [
            np.concatenate([speech_pcm(PAUSED[0]), silence(PAUSE_SECS), speech_pcm(PAUSED[1])])
        ],
    }
    session = VoiceSession(
        reduce=state.reduce,
        initial_state=state.initial_state,
        models=models,
        config_factory=lambda: SessionConfig(speculative=speculative),
    )
    figures: dict[str, dict] = {}
    async with SessionDriver(session) as d:
        for kind, audios in utterances.items():
            v2v: list[float] = []
            ended: list = []
            started = 0
            for _ in range(rounds):
                for audio in audios:
                    before = {k: len(d.events(k)) for k in ("BotTurnText", "SpeculationEnded")}
                    starts = len(d.events("SpeculationStarted"))
                    latencies = len(d.events("LatencyMeasured"))
                    await d.play(audio)
                    await d.play_silence_until(
                        lambda b=before: len(d.events("BotTurnText")) > b["BotTurnText"], 60
                    )
                    await d.play(silence(0.6))
                    v2v += [e.seconds for e in d.events("LatencyMeasured")[latencies:]]
                    ended += d.events("SpeculationEnded")[before["SpeculationEnded"] :]
                    started += len(d.events("SpeculationStarted")) - starts
            reasons = Counter(e.reason for e in ended if not e.adopted)
            figures[kind] = {
                "utterances": rounds * len(audios),
                "speculation": {
                    "started": started,
                    "adopted": sum(1 for e in ended if e.adopted),
                    "discarded": sum(1 for e in ended if not e.adopted),
                    "discard_reasons": dict(reasons),
                    "wasted_tokens": sum(e.wasted_tokens for e in ended),
                },
                "voice_to_voice": {
                    "median": statistics.median(v2v) if v2v else None,
                    "p95": state.percentile(v2v, 95),
                    "n": len(v2v),
                },
            }
    return figures


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speculation", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    clear_provider_variables()

    from pipeline.providers.local.models import LocalModels

    models = LocalModels()
    models.warm_up()
    load_before = os.getloadavg()
    result = {
        "on": await run(True, args.rounds, models),
        "off": await run(False, args.rounds, models),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    for setting in ("on", "off"):
        for kind, fig in result[setting].items():
            spec, v2v = fig["speculation"], fig["voice_to_voice"]
            print(
                f"speculation {setting:<3} {kind:<20} n={fig['utterances']:<3} "
                f"v2v median {ms(v2v['median'])}, p95 {ms(v2v['p95'])}; "
                f"{spec['started']} started, {spec['adopted']} adopted, "
                f"{spec['discarded']} discarded {spec['discard_reasons']}, "
                f"{spec['wasted_tokens']} tokens wasted"
            )
    load = "/".join(f"{x:.2f}" for x in result["loadavg_before"])
    print(f"load average before {load} ({result['cpus']} CPUs)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
