"""The generation switcher with fake generations: when a change applies, what carries over,
what happens to the microphone's audio meanwhile, and :class:`TurnActivity`, which says
when a turn is under way."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from types import SimpleNamespace

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection

from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.registry import choice_for
from pipeline.switcher import HANDOVER_FRAMES, GenerationSwitcher, TurnActivity

IDLE_SECS = 0.1
GROQ_KEY = "gsk_switcher_test_key_0123456789"


def config(llm: str = "local", model: str | None = None, keys=None) -> SessionConfig:
    return SessionConfig(
        keys=ProviderKeys({"groq": GROQ_KEY} if keys is None else keys),
        stt=choice_for("local", "stt"),
        llm=choice_for(llm, "llm", model),
        tts=choice_for("local", "tts"),
    )


class Microphone:
    """A generation's transport input: what audio reached it, in order."""

    def __init__(self):
        self.frames: list[int] = []

    def input(self):
        return self

    async def push_pcm(self, pcm: bytes, sample_rate: int) -> None:
        assert sample_rate == 16000
        self.frames.append(int(np.frombuffer(pcm, dtype=np.int16)[0]))


class Worker:
    """Takes the switcher's event handlers; starts once ``gate`` is open."""

    def __init__(self):
        self.handlers = {}
        self.gate = asyncio.Event()
        self.gate.set()

    def event_handler(self, name: str):
        def register(fn):
            self.handlers[name] = fn
            return fn

        return register


class Runner:
    """What pipecat's WorkerRunner does with a generation: start it, run until cancelled."""

    def __init__(self):
        self.reasons: list[str] = []
        self._cancelled = asyncio.Event()

    async def add_workers(self, worker: Worker) -> None:
        self.worker = worker

    async def run(self) -> None:
        await self.worker.gate.wait()
        await self.worker.handlers["on_pipeline_started"](self.worker, None)
        await self._cancelled.wait()

    async def cancel(self, reason: str) -> None:
        self.reasons.append(reason)
        self._cancelled.set()


class Harness:
    """A switcher whose generations are fakes; ``events`` is what it reported."""

    def __init__(self, first: SessionConfig | None = None):
        self.events = []
        self.built: list[SimpleNamespace] = []
        self.runners: list[Runner] = []
        self.build_error: Exception | None = None
        self.build_gate: threading.Event | None = None  # holds the next build (a thread)
        self.hold_next_start = False
        self.switcher = GenerationSwitcher(
            first or config(),
            self.build,
            self.events.append,
            idle_secs=IDLE_SECS,
            runner=self.new_runner,
        )
        self.task: asyncio.Task | None = None

    def build(self, cfg: SessionConfig, context: LLMContext | None) -> SimpleNamespace:
        if self.build_gate is not None:
            self.build_gate.wait(5)
        if self.build_error is not None:
            raise self.build_error
        worker = Worker()
        if self.hold_next_start:
            worker.gate.clear()
        generation = SimpleNamespace(
            config=cfg,
            context=context or LLMContext(),
            activity=SimpleNamespace(idle=True),
            worker=worker,
            transport=Microphone(),
        )
        self.built.append(generation)
        return generation

    def new_runner(self) -> Runner:
        self.runners.append(Runner())
        return self.runners[-1]

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def providers(self) -> list[str]:
        return [e.llm for e in self.events if e.kind == "ProvidersChanged"]

    async def __aenter__(self) -> Harness:
        self.switcher.start()
        self.task = asyncio.create_task(self.switcher.run())
        return self

    async def __aexit__(self, *exc) -> None:
        if self.build_gate is not None:
            self.build_gate.set()
        await self.switcher.stop("test over")
        await asyncio.wait_for(self.task, 5)
        self.switcher.close()


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def push(switcher: GenerationSwitcher, *values: int) -> None:
    for value in values:
        await switcher.push(16000, np.full(320, value, dtype=np.int16))


async def test_a_change_before_the_first_generation_applies_from_the_start():
    h = Harness()
    h.switcher.request(config("groq", "llama-3.3-70b-versatile"))
    async with h:
        await until(lambda: "ProvidersChanged" in h.kinds())
        await asyncio.sleep(3 * IDLE_SECS)
    assert len(h.built) == 1, "a switch was made instead of starting with the change"
    assert h.providers() == ["Groq llama-3.3-70b-versatile"]
    assert h.kinds()[:2] == ["SessionStarted", "ProvidersChanged"]


async def test_a_change_waits_for_the_gap_between_turns_and_keeps_the_conversation():
    async with Harness() as h:
        await until(lambda: h.switcher.generation is not None and h.providers())
        first = h.built[0]
        first.context.add_message({"role": "user", "content": "My name is Ada."})
        first.activity.idle = False  # a turn is under way
        h.switcher.request(config("groq"))
        await asyncio.sleep(0.4)
        assert len(h.built) == 1, "the switch did not wait for the turn to end"

        first.activity.idle = True
        idle_at = time.monotonic()
        await until(lambda: len(h.providers()) == 2)
        assert time.monotonic() - idle_at >= IDLE_SECS
        second = h.built[1]
        assert second.context is first.context, "the conversation was lost in the switch"
        assert h.switcher.generation is second and h.switcher.config is second.config
        assert h.runners[0].reasons == ["switching providers"]
        assert h.kinds().count("SessionStarted") == 1
        assert h.providers()[1].startswith("Groq")


async def test_of_several_changes_asked_for_during_a_turn_the_last_one_wins():
    async with Harness() as h:
        await until(lambda: h.providers())
        h.built[0].activity.idle = False
        h.switcher.request(config("groq", "openai/gpt-oss-20b"))
        h.switcher.request(config("groq", "llama-3.3-70b-versatile"))
        await asyncio.sleep(0.1)
        h.built[0].activity.idle = True
        await until(lambda: len(h.providers()) == 2)
        await asyncio.sleep(3 * IDLE_SECS)
    assert len(h.built) == 2
    assert h.providers()[1] == "Groq llama-3.3-70b-versatile"


async def test_audio_during_the_handover_is_held_and_replayed_in_order_into_the_new_generation():
    async with Harness() as h:
        await until(lambda: h.providers())
        old = h.built[0]
        await push(h.switcher, 0, 1, 2)
        assert old.transport.frames == [0, 1, 2]

        h.hold_next_start = True  # the new generation takes a while to start
        h.switcher.request(config("groq"))
        await until(lambda: h.runners[0].reasons)  # the old one is being cancelled
        await push(h.switcher, 3, 4, 5, 6, 7)
        new = h.built[1]
        assert old.transport.frames == [0, 1, 2], "audio went to the generation on its way out"
        assert new.transport.frames == []

        new.worker.gate.set()
        await until(lambda: len(new.transport.frames) == 5)
        await push(h.switcher, 8)
        assert new.transport.frames == [3, 4, 5, 6, 7, 8]


async def test_the_handover_holds_the_latest_frames_when_it_runs_long():
    async with Harness() as h:
        await until(lambda: h.providers())
        h.hold_next_start = True
        h.switcher.request(config("groq"))
        await until(lambda: h.runners[0].reasons)
        await push(h.switcher, *range(HANDOVER_FRAMES + 50))
        h.built[1].worker.gate.set()
        await until(lambda: len(h.built[1].transport.frames) == HANDOVER_FRAMES)
        assert h.built[1].transport.frames == list(range(50, HANDOVER_FRAMES + 50))


async def test_a_generation_that_fails_to_build_is_reported_without_its_key_and_the_old_one_runs():
    async with Harness() as h:
        await until(lambda: h.providers())
        h.build_error = RuntimeError(f"refused key {GROQ_KEY}")
        h.switcher.request(config("groq"))
        await until(lambda: "ErrorReported" in h.kinds())
        error = h.events[-1]
        assert "refused key ***" in error.message and GROQ_KEY not in error.message
        assert not error.fatal and h.runners[0].reasons == []
        assert h.switcher.generation is h.built[0]
        await push(h.switcher, 1)
        assert h.built[0].transport.frames == [1]

        h.build_error = None  # the next change works
        h.switcher.request(config("groq"))
        await until(lambda: len(h.providers()) == 2)


async def test_stopping_cancels_the_running_generation_and_starts_no_other():
    h = Harness()
    async with h:
        await until(lambda: h.providers())
        await h.switcher.stop("client disconnected")
        await asyncio.wait_for(h.task, 2)
        assert h.runners[0].reasons == ["client disconnected"]
        h.switcher.request(config("groq"))
        await asyncio.sleep(3 * IDLE_SECS)
    assert len(h.built) == 1


async def test_stopping_while_the_next_generation_is_built_abandons_the_switch():
    async with Harness() as h:
        await until(lambda: h.providers())
        h.build_gate = threading.Event()
        h.switcher.request(config("groq"))
        await asyncio.sleep(3 * IDLE_SECS)  # the build is under way on its thread
        stopping = asyncio.create_task(h.switcher.stop("client disconnected"))
        await asyncio.sleep(0.05)
        h.build_gate.set()
        await stopping
        await asyncio.wait_for(h.task, 2)
        assert h.runners[0].reasons == ["client disconnected"]
        assert len(h.runners) == 1 and len(h.providers()) == 1


async def test_a_change_made_while_the_first_generation_is_built_follows_by_a_switch():
    h = Harness()
    h.build_gate = threading.Event()
    async with h:
        await asyncio.sleep(0.05)  # the first build is under way with the first settings
        h.switcher.request(config("groq"))
        h.build_gate.set()
        await until(lambda: len(h.providers()) == 2)
    assert [g.config.llm.provider for g in h.built] == ["local", "groq"]


async def test_a_cloud_stage_without_a_key_starts_local_with_a_notice_after_session_started():
    async with Harness(config("groq", keys={})) as h:
        await until(lambda: "ErrorReported" in h.kinds())
        assert h.built[0].config.llm.provider == "local"
        # SessionStarted clears the page's error line: the notice must come after it.
        assert h.kinds() == ["SessionStarted", "ProvidersChanged", "ErrorReported"]
        assert "No API key for Groq" in h.events[-1].message
        assert "LLM" in h.events[-1].message
        h.switcher.request(config())
        await until(lambda: len(h.providers()) == 2)
        assert h.kinds().count("ErrorReported") == 1, "the notice was repeated"


async def test_the_pipeline_holds_the_switcher_only_weakly():
    """pipecat's processors form cycles: what they reference lives until the cyclic GC."""
    h = Harness()
    async with h:
        await until(lambda: h.providers())
    await asyncio.sleep(0)  # the switch loop, cancelled, ends
    h.switcher.drop_references()
    generation, switcher = h.built[0], weakref.ref(h.switcher)
    del h.switcher, h.task
    gc.collect()
    assert switcher() is None, "the generation keeps the switcher (and its session) alive"
    # The generation's start handler now does nothing rather than fail.
    await generation.worker.handlers["on_pipeline_started"](generation.worker, None)


def pushed(frame) -> FramePushed:
    return FramePushed(
        source=None,
        destination=None,
        frame=frame,
        direction=FrameDirection.DOWNSTREAM,
        timestamp=0,
    )


async def test_a_turn_runs_from_the_user_speaking_until_the_reply_has_been_spoken():
    now = [0.0]
    activity = TurnActivity(clock=lambda: now[0])
    assert activity.idle
    await activity.on_push_frame(pushed(UserStartedSpeakingFrame()))
    assert not activity.idle
    await activity.on_push_frame(pushed(UserStoppedSpeakingFrame()))
    now[0] = 3.0  # transcription and LLM under way: nothing audible yet
    assert not activity.idle
    await activity.on_push_frame(pushed(TranscriptionFrame("hi", "user", "now")))
    now[0] = 6.5  # each sign of progress extends the wait for the reply
    assert not activity.idle
    await activity.on_push_frame(pushed(BotStartedSpeakingFrame()))
    now[0] = 60.0  # a long reply
    assert not activity.idle
    await activity.on_push_frame(pushed(BotStoppedSpeakingFrame()))
    assert activity.idle


async def test_a_reply_that_fails_or_never_comes_ends_the_turn():
    now = [0.0]
    activity = TurnActivity(clock=lambda: now[0])
    await activity.on_push_frame(pushed(UserStoppedSpeakingFrame()))
    await activity.on_push_frame(pushed(ErrorFrame("Groq refused the API key")))
    assert activity.idle, "a failed reply kept the session busy"

    await activity.on_push_frame(pushed(UserStoppedSpeakingFrame()))
    assert not activity.idle
    now[0] = TurnActivity.REPLY_GRACE_SECS
    assert activity.idle, "a reply that never came kept the session busy"
