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
VOICE_LAB = "voice-lab"
# Each system's uncounted first turn.
WARM_UP = "Hello, can you hear me?"


@dataclass
class Contender:
    """One system in the race: how to make a connection to it, and what it follows."""

    name: str
    follows: str  # the example or documentation it is written from
    connect: Callable[[int], tuple[object, Callable[[], bool]]]  # index -> (handler, ready)
    calls: str = ""  # its STT, LLM and TTS as it makes them


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


# -- the systems, per profile ------------------------------------------------------------


def _voice_lab(name: str, config: Callable, models, speculative: bool) -> Contender:
    from pipeline.session import VoiceSession
    from ui import state

    def connect(index: int):
        session = VoiceSession(
            reduce=state.reduce,
            initial_state=state.initial_state,
            models=models,
            # The other systems' turns leave this one's microphone silent for a while:
            # not a closed tab.
            config_factory=lambda: config(index, speculative=speculative, audio_gone_secs=3600),
        )

        def started() -> bool:
            return session.voice is not None and any(
                e.kind == "SessionStarted" for e in session.events
            )

        return session, started

    follows = f"this repository (VOICE_LAB_SPECULATIVE={int(speculative)})"
    return Contender(name, follows, connect, "Voice Lab's own")


def contenders(profile: str, models, fakes=None) -> list[Contender]:
    """The four systems for ``profile``; cloud-sim ones on ``fakes`` (:class:`CloudFakes`)."""
    from bench.peers import fastrtc_loop
    from bench.peers.pipecat_bot import PipecatBot
    from pipeline.config import SessionConfig

    serial_models = models
    if profile == "local":

        def config(_index, **knobs):
            return SessionConfig(**knobs)

        # Each system gets a llama.cpp server of its own, as it would running alone: the
        # server's one slot keeps the last prompt, so a turn re-reads only what is new. A
        # shared one would hold another system's conversation, and which system found its own
        # prefix there would depend on the order of the turns.
        serial_models = _models_of_its_own(models)
        stock_services = _local_stock_services(_llm_server_of_its_own())
        local = SessionConfig()
        fastrtc_llm = _llm_server_of_its_own()
        loop_calls = lambda: fastrtc_loop.local_calls(  # noqa: E731
            models, fastrtc_llm, max_tokens=local.llm_max_tokens, temperature=0.3
        )
        prompt = local.system_prompt
        calls = "Whisper tiny.en (greedy), SmolLM2 via llama.cpp's OpenAI API (openai SDK), Piper"
    else:
        config = fakes.session_config
        stock_services = _cloud_stock_services(fakes)
        loop_calls = lambda: _cloud_loop_calls(fakes)  # noqa: E731
        prompt = fakes.session_config(0).system_prompt
        calls = "Groq Whisper and chat, not streamed (groq SDK), ElevenLabs HTTP stream"

    def pipecat(_index: int):
        bot = PipecatBot(stock_services)
        return bot, lambda: bot.started

    def fastrtc(_index: int):
        stt, llm, tts = loop_calls()
        return fastrtc_loop.voice_loop(stt, llm, tts, prompt), lambda: True

    return [
        _voice_lab(VOICE_LAB, config, models, speculative=True),
        _voice_lab("voice-lab-serial", config, serial_models, speculative=False),
        Contender("pipecat", PIPECAT_FOLLOWS[profile], pipecat, PIPECAT_CALLS[profile]),
        Contender(
            "fastrtc",
            "fastrtc demo/llm_voice_chat/app.py, Groq Whisper as in demo/talk_to_claude",
            fastrtc,
            calls,
        ),
    ]


PIPECAT_FOLLOWS = {
    "cloud-sim": "pipecat examples/voice/voice-groq.py, with voice-elevenlabs.py's TTS",
    "cloud-sim-streaming": "pipecat examples/voice/voice-elevenlabs.py, with voice-groq.py's LLM",
    "local": "pipecat examples/voice/voice-piper.py, transcription/transcription-whisper.py "
    "and update-settings/llm/llm-ollama.py (a local OpenAI-compatible server)",
}
PIPECAT_CALLS = {
    "cloud-sim": "GroqSTTService, GroqLLMService, ElevenLabsTTSService",
    "cloud-sim-streaming": "ElevenLabsRealtimeSTTService, GroqLLMService, ElevenLabsTTSService",
    "local": "WhisperSTTService (faster-whisper defaults), OpenAILLMService on llama.cpp, "
    "PiperTTSService",
}


def _models_of_its_own(models):
    """Local models of their own (warmed), with the start-up probe's verdicts of ``models``."""
    from pipeline.providers.local.models import LocalModels

    own = LocalModels()
    own.unavailable = dict(models.unavailable)
    own.warm_up()
    return own


def _llm_server_of_its_own():
    """SmolLM2 on a llama.cpp server of its own (loaded as Voice Lab loads its own)."""
    from pipeline.providers.local.models import LocalModels

    return LocalModels().llm


def _local_stock_services(server) -> Callable[[], tuple]:
    """pipecat's Whisper and Piper on the embedded models, its OpenAI service on ``server``."""

    def services():
        from pipecat.services.openai.llm import OpenAILLMService
        from pipecat.services.piper.tts import PiperTTSService
        from pipecat.services.whisper.stt import WhisperSTTService

        from pipeline.config import SessionConfig
        from pipeline.providers.local.models import LLM_LABEL, piper_voice_onnx, whisper_model_dir

        local = SessionConfig()
        stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=str(whisper_model_dir())))
        llm = OpenAILLMService(
            api_key=server.api_key,
            base_url=server.openai_base_url,
            settings=OpenAILLMService.Settings(
                model=LLM_LABEL,
                system_instruction=local.system_prompt,
                max_tokens=local.llm_max_tokens,
                temperature=0.3,
            ),
        )
        voice = piper_voice_onnx()
        tts = PiperTTSService(
            download_dir=voice.parent, settings=PiperTTSService.Settings(voice=voice.stem)
        )
        return stt, llm, tts

    return services


def _cloud_stock_services(fakes) -> Callable[[], tuple]:
    """pipecat's Groq STT and LLM (or ElevenLabs realtime STT) and ElevenLabs TTS, on the fakes."""

    def services():
        from pipecat.services.elevenlabs.stt import ElevenLabsRealtimeSTTService
        from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
        from pipecat.services.groq.llm import GroqLLMService
        from pipecat.services.groq.stt import GroqSTTService

        from bench.cloudsim import ELEVEN_KEY, GROQ_KEY
        from pipeline.providers import elevenlabs, groq

        config = fakes.session_config(0)
        if fakes.streaming:
            stt = ElevenLabsRealtimeSTTService(
                api_key=ELEVEN_KEY, base_url=elevenlabs.websocket_host()
            )
        else:
            stt = GroqSTTService(
                api_key=GROQ_KEY,
                base_url=groq.openai_base_url(),
                settings=GroqSTTService.Settings(model=config.stt.model),
            )
        llm = GroqLLMService(
            api_key=GROQ_KEY,
            base_url=groq.openai_base_url(),
            settings=GroqLLMService.Settings(
                model=config.llm.model, system_instruction=config.system_prompt
            ),
        )
        tts = ElevenLabsTTSService(
            api_key=ELEVEN_KEY,
            url=elevenlabs.websocket_url(),
            settings=ElevenLabsTTSService.Settings(voice=config.tts.voice, model=config.tts.model),
        )
        return stt, llm, tts

    return services


def _cloud_loop_calls(fakes) -> tuple:
    from bench.cloudsim import ELEVEN_KEY, GROQ_KEY, LLM, STT
    from bench.peers import fastrtc_loop
    from pipeline.providers.groq import LLM_MAX_TOKENS

    config = fakes.session_config(0)
    return fastrtc_loop.cloud_calls(
        (fakes.groq.base_url, GROQ_KEY),
        (fakes.elevenlabs.base_url, ELEVEN_KEY),
        stt_model=STT[1],
        llm_model=LLM[1],
        tts_model=config.tts.model,
        voice=config.tts.voice,
        max_tokens=LLM_MAX_TOKENS,
    )


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
) -> list[Entrant]:
    """Every system takes turn k before any takes turn k+1; the order rotates each turn."""
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
        for entrant in entrants:
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


async def run_peers(profile: str, turns: int) -> dict:
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
        entrants = await race(systems, turns, say, CpuMeter(_fakes_thread()))
    peers = with_ratios([system_figures(e) for e in entrants])
    return {
        "mode": "peers",
        "profile": profile,
        "turns_per_system": turns,
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

    result = await run_peers(args.profile, args.turns)
    print(format_peers(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.html:
        write_peers_html(result, args.html)
    return result
