"""``python -m bench --profile P --peers``: Voice Lab raced against the tools one might pick.

Four systems, in one run, on the same utterances, the same provider fakes
(with the same injected latencies) and the same machine, interleaved turn by
turn so that a change in the machine's load hits them all alike:

- ``voice-lab``: Voice Lab as it ships (speculative turns on);
- ``voice-lab-serial``: the same with ``VOICE_LAB_SPECULATIVE=0``;
- ``pipecat``: a stock pipecat bot, the pipeline of pipecat's own examples
  (:mod:`bench.peers.pipecat_bot`);
- ``fastrtc``: fastrtc's own voice loop, ``ReplyOnPause`` around the reply
  function of its demos (:mod:`bench.peers.fastrtc_loop`).

Each is a fastrtc handler, and each is driven and heard the same way, from
outside (:mod:`bench.peers.listener`): Piper-made questions fed in real time
as 16 kHz 20 ms frames, reply audio played out as it is emitted. Per turn:

- **V2V**: from the end of the question's voice (its last audible sample) to
  the first audible sample of the reply played;
- **barge-in stop** (the last turn, with two or more): a long answer is
  interrupted 1 s after it starts; from the onset of the interruption's voice
  to the last audible sample of the answer played;
- **CPU**: this process's CPU seconds during the system's turn, less the
  provider fakes' thread (the other systems sit idle meanwhile; their emit
  loops are paused).

A turn ends once the reply has played and 1.2 s of quiet followed; then the
next system takes its turn. The systems' order rotates every turn. Before the
race each system answers one greeting, not counted: whoever went first would
otherwise also pay the process's first use of the fakes and the models.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench import figures
from bench.peers.systems import VOICE_LAB, Contender, contenders
from bench.scenarios import BARGE_IN_AFTER_SECS, INTERRUPTION, script
from testkit.speech import SAMPLE_RATE, speech_pcm

# Quiet after a reply before the turn counts as over (longer than any pause within one).
REPLY_QUIET_SECS = 1.2
# Audio counts as playing while the last audible sample is at most this old (chunks come
# paced, and a listener's queue may run dry for a few ms between two of them).
PLAYING_GAP_SECS = 0.05
# After an interruption, how long to wait for the answer to it before moving on.
ANSWER_WAIT_SECS = 8.0
TURN_TIMEOUT_SECS = 45.0
# Each system's uncounted first turn.
WARM_UP = "Hello, can you hear me?"


@dataclass
class PeerTurn:
    system: str
    index: int
    kind: str  # "warm-up" (not counted) | "question" | "barge-in"
    question: str
    v2v: float | None = None
    barge_in_stop: float | None = None
    cpu_seconds: float | None = None
    error: str | None = None
    started: float = 0.0  # seconds into the race: the interleaving, for the record


# -- one turn, heard from outside --------------------------------------------------------


class CpuMeter:
    """This process's CPU seconds, less the provider fakes' thread (when there is one)."""

    def __init__(self, fakes_thread: threading.Thread | None):
        self._thread = fakes_thread.native_id if fakes_thread else None

    def __call__(self) -> float:
        total = figures.cpu_seconds()
        if self._thread is not None:
            total -= figures.thread_cpu_seconds(self._thread) or 0.0
        return total


async def ask(listener, turn: PeerTurn, audio: np.ndarray) -> None:
    """Say the question, listen until its reply has played and the line is quiet."""
    playout = listener.playout
    voice_end = await listener.play(audio)
    await listener.play_silence_until(
        lambda: playout.last_audible_end > voice_end and playout.quiet_since() >= REPLY_QUIET_SECS,
        TURN_TIMEOUT_SECS,
    )
    turn.v2v = playout.first_audible_after(voice_end) - voice_end


async def ask_and_interrupt(
    listener, turn: PeerTurn, audio: np.ndarray, interruption: np.ndarray
) -> None:
    """Ask for a long answer, speak over it ``BARGE_IN_AFTER_SECS`` in, time the stop."""
    playout = listener.playout
    voice_end = await listener.play(audio)
    await listener.play_silence_until(
        lambda: playout.last_audible_end > voice_end, TURN_TIMEOUT_SECS
    )
    first = playout.first_audible_after(voice_end)
    turn.v2v = first - voice_end
    try:  # speak over the reply while it is heard (not in a gap between two of its sentences)
        await listener.play_silence_until(
            lambda: (
                time.monotonic() >= first + BARGE_IN_AFTER_SECS
                and playout.quiet_since() < PLAYING_GAP_SECS
            ),
            REPLY_QUIET_SECS + BARGE_IN_AFTER_SECS,
        )
    except TimeoutError:
        turn.error = "the reply ended before the interruption"
        return
    onset = time.monotonic() + figures.speech_onset(interruption, SAMPLE_RATE)
    await listener.play(interruption)
    await listener.play_silence_until(
        lambda: playout.quiet_since() >= REPLY_QUIET_SECS, TURN_TIMEOUT_SECS
    )
    stopped = playout.stop_after(onset)
    if stopped is None:
        turn.error = "the reply fell silent just before the interruption's voice began"
        return
    turn.barge_in_stop = max(0.0, stopped - onset)
    # The answer to the interruption, if one comes, plays out within this system's turn.
    after = stopped
    await listener.play_silence_until(
        lambda: (
            (
                playout.last_audible_end > after + figures.STOP_GAP_SECS
                and playout.quiet_since() >= REPLY_QUIET_SECS
            )
            or playout.quiet_since() >= ANSWER_WAIT_SECS
        ),
        TURN_TIMEOUT_SECS,
    )


# -- the race ---------------------------------------------------------------------------


@dataclass
class Entrant:
    contender: Contender
    listener: object
    turns: list[PeerTurn] = field(default_factory=list)
    startup_seconds: float = 0.0
    error: str | None = None


async def race(
    systems: list[Contender],
    turns: int,
    say: Callable[[str, str], np.ndarray],
    cpu: Callable[[], float],
    warm_up: bool = True,
) -> list[Entrant]:
    """Every system takes turn k before any takes turn k+1; the order rotates each turn.

    With ``warm_up``, each first answers the uncounted greeting.
    """
    from bench.peers.listener import Listener

    lines = script(0, turns)
    entrants: list[Entrant] = []
    race_start = time.monotonic()
    try:
        for index, contender in enumerate(systems):
            handler, ready = contender.connect(index)
            listener = Listener(handler, ready)
            entrant = Entrant(contender, listener)
            entrants.append(entrant)
            started = time.monotonic()
            await listener.start()
            entrant.startup_seconds = time.monotonic() - started
            listener.pause()
        audio = {
            e.contender.name: (
                [say(text, f"s{i}t{k}") for k, (_, text) in enumerate(lines)],
                say(INTERRUPTION, f"s{i}t{len(lines) - 1}i"),
                say(WARM_UP, f"s{i}w"),
            )
            for i, e in enumerate(entrants)
        }
        for entrant in entrants if warm_up else []:
            turn = PeerTurn(entrant.contender.name, -1, "warm-up", WARM_UP)
            entrant.turns.append(turn)
            entrant.listener.resume()
            try:
                await ask(entrant.listener, turn, audio[entrant.contender.name][2])
            except TimeoutError:
                turn.error = "no reply within the time limit"
            finally:
                entrant.listener.pause()
        for k, (kind, text) in enumerate(lines):
            for entrant in entrants[k % len(entrants) :] + entrants[: k % len(entrants)]:
                if entrant.error:
                    continue
                questions, interruption, _ = audio[entrant.contender.name]
                turn = PeerTurn(
                    entrant.contender.name, k, kind, text, started=time.monotonic() - race_start
                )
                entrant.turns.append(turn)
                entrant.listener.resume()
                before = cpu()
                try:
                    if kind == "barge-in":
                        await ask_and_interrupt(entrant.listener, turn, questions[k], interruption)
                    else:
                        await ask(entrant.listener, turn, questions[k])
                except TimeoutError:
                    turn.error = "no reply within the time limit"
                finally:
                    turn.cpu_seconds = cpu() - before
                    entrant.listener.pause()
    finally:
        for entrant in entrants:
            with contextlib.suppress(Exception):
                await entrant.listener.close()
    return entrants


# -- figures ----------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def system_figures(entrant: Entrant) -> dict:
    turns = [t for t in entrant.turns if t.kind != "warm-up"]
    cpu = [t.cpu_seconds for t in turns if t.cpu_seconds is not None]
    return {
        "name": entrant.contender.name,
        "follows": entrant.contender.follows,
        "calls": entrant.contender.calls,
        "v2v": figures.summarize([t.v2v for t in turns]),
        "barge_in": figures.summarize([t.barge_in_stop for t in turns if t.kind == "barge-in"]),
        "cpu": {
            "per_turn": figures.summarize(cpu),
            "mean_per_turn": sum(cpu) / len(cpu) if cpu else None,
            "total_seconds": sum(cpu),
        },
        "startup_seconds": entrant.startup_seconds,
        "errors": [
            f"{'warm-up' if t.index < 0 else f'turn {t.index}'}: {t.error}"
            for t in entrant.turns
            if t.error
        ],
        # Exceptions out of the handler's emit(), which fastrtc logs and carries on from.
        "emit_errors": entrant.listener.emit_errors,
    }


def with_ratios(peers: list[dict]) -> list[dict]:
    """Each system's figures divided by Voice Lab's (above 1: slower or costlier than Voice Lab)."""
    base = next(p for p in peers if p["name"] == VOICE_LAB)
    for p in peers:
        p["ratio_to_voice_lab"] = {
            "v2v_median": _ratio(p["v2v"]["median"], base["v2v"]["median"]),
            "v2v_p95": _ratio(p["v2v"]["p95"], base["v2v"]["p95"]),
            "barge_in_median": _ratio(p["barge_in"]["median"], base["barge_in"]["median"]),
            "cpu_per_turn": _ratio(p["cpu"]["mean_per_turn"], base["cpu"]["mean_per_turn"]),
        }
    return peers


# -- the mode ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _profile(profile: str):
    """(fakes or None, say(text, key) -> 16 kHz audio) for ``profile``."""
    if profile == "local":
        yield None, lambda text, _key: speech_pcm(text)
        return
    from bench.cloudsim import CloudFakes, Utterances

    utterances = Utterances()
    async with CloudFakes(utterances, streaming=profile == "cloud-sim-streaming") as fakes:
        yield fakes, lambda text, key: utterances.say(text, key, speech_pcm(text))


def _fakes_thread() -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == "cloud-fakes"), None)


async def run_peers(profile: str, turns: int, warm_up: bool = True) -> dict:
    """The race on ``profile``, ``turns`` turns per system: the JSON-ready result."""
    from bench.cloudsim import published_latencies
    from pipeline.providers.local.models import shared_models
    from pipeline.runtime import prepare_runtime

    load_before = os.getloadavg()
    prepare_runtime()
    models = shared_models()
    for text in [WARM_UP, *(t for _, t in script(0, turns)), INTERRUPTION]:
        speech_pcm(text)  # synthesised up front: the microphone must not pause between turns
    started = time.perf_counter()
    async with _profile(profile) as (fakes, say):
        systems = contenders(profile, models, fakes)
        entrants = await race(systems, turns, say, CpuMeter(_fakes_thread()), warm_up)
    peers = with_ratios([system_figures(e) for e in entrants])
    return {
        "mode": "peers",
        "profile": profile,
        "turns_per_system": turns,
        "warm_up": warm_up,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peers": peers,
        "turns": [dataclasses.asdict(t) for e in entrants for t in e.turns],
        "provider_latencies": published_latencies() if profile != "local" else None,
        "rules": {
            "reply_quiet_secs": REPLY_QUIET_SECS,
            "barge_in_after_secs": BARGE_IN_AFTER_SECS,
            "stop_gap_secs": figures.STOP_GAP_SECS,
            "audible_threshold": figures.AUDIBLE_THRESHOLD,
        },
        "wall_seconds": time.perf_counter() - started,
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
    }


async def peers_mode(args: argparse.Namespace) -> dict:
    """``--peers``: run the race, print the table, write ``--json`` and ``--html``."""
    import json

    from bench.report import format_peers, write_peers_html

    # --quick (the CI smoke run) checks that the race runs, not its figures: no greeting.
    result = await run_peers(args.profile, args.turns, warm_up=not args.quick)
    print(format_peers(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.html:
        write_peers_html(result, args.html)
    return result
