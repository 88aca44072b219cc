"""Silero VAD and Smart Turn for every session of the process: one ONNX session of each.

pipecat's analyzers each load their own model, so every session (and every
pipeline generation after a provider switch) paid a Silero and a Smart Turn
``InferenceSession`` (~55 ms of CPU; ~45 MB of RSS per session went with
them), and each analyzer runs its model on a thread of its own: Silero's
woken for every 20 ms microphone frame. Here the process holds one session of
each model (onnxruntime's ``run`` is thread-safe, and neither model keeps
anything in its session: Silero's recurrent state is in pipecat's
``SileroOnnxModel``, one per analyzer), and

- every session's Silero windows go through one thread of the process: a
  thread kept busy by all sessions is not woken for each frame as a thread
  per session is, so an idle listening session costs less CPU. Silero on the
  event loop itself saves no CPU over this and puts the VAD's work on the one
  thread that runs every session's pipeline, which then falls behind under
  many sessions (underruns, late barge-ins);
- Smart Turn's inferences queue for a thread per core, in order, each at full
  speed, rather than on a thread per session contending for the cores;
- Smart Turn's segment is placed by the audio itself: by samples rather than
  arrival times, and by where the VAD heard the speech start and stop rather
  than when that news reached it (:class:`SmartTurn`). Under load pipecat's
  own analyzer heard a shifted or truncated segment, and its verdict on a
  question it is unsure of came and went with the load.

pipecat offers no way to hand an analyzer a model or a thread, so the two
classes below stand on :mod:`pipeline.compat.pipecat`'s, which set the few
private attributes pipecat's constructors would have.
``tests/test_turn_models.py`` checks they set exactly those.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from importlib import resources

import numpy as np
import onnxruntime as ort
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.vad.silero import SileroOnnxModel
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.metrics.metrics import MetricsData

from pipeline.compat.pipecat import SileroVADOnModel, SmartTurnOnSession, predict_endpoint

# The VAD's news of speech starting or stopping reaches Smart Turn at most this
# late, even under many sessions; anything older is other news.
NEWS_LAG_SECS = 1.0
# Smart Turn inferences run at once, one per core (more would only share the cores).
SMART_TURN_THREADS = min(4, os.cpu_count() or 1)
# Where SmartTurn's audio clock starts: any positive time (pipecat reads 0 as "no speech yet").
AUDIO_CLOCK_ORIGIN = 1000.0

SILERO_FILE = ("pipecat.audio.vad.data", "silero_vad.onnx")
SMART_TURN_FILE = ("pipecat.audio.turn.smart_turn.data", "smart-turn-v3.2-cpu.onnx")


def _model_path(package: str, name: str) -> str:
    return str(resources.files(package).joinpath(name))


def _one_thread_options(*, sequential: bool = False) -> ort.SessionOptions:
    """The options pipecat gives each model: one thread, no pool of onnxruntime's own."""
    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    if sequential:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class TurnModels:
    """The process's Silero and Smart Turn sessions and Smart Turn's thread, made on first use."""

    def __init__(self):
        self._lock = threading.Lock()

    @cached_property
    def silero(self) -> ort.InferenceSession:
        with self._lock:
            return ort.InferenceSession(
                _model_path(*SILERO_FILE),
                sess_options=_one_thread_options(),
                providers=["CPUExecutionProvider"],
            )

    @cached_property
    def smart_turn(self) -> ort.InferenceSession:
        with self._lock:
            return ort.InferenceSession(
                _model_path(*SMART_TURN_FILE),
                sess_options=_one_thread_options(sequential=True),
                providers=["CPUExecutionProvider"],
            )

    @cached_property
    def vad_queue(self) -> ThreadPoolExecutor:
        """The one thread every session's Silero windows are judged on, in arrival order."""
        with self._lock:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="silero")

    @cached_property
    def smart_turn_queue(self) -> ThreadPoolExecutor:
        """The threads every session's Smart Turn inferences queue for, one per core.

        A verdict ends every turn, so a burst of them (sessions that stopped
        speaking together) uses every core; each runs on one thread at full
        speed, first come first served.
        """
        with self._lock:
            return ThreadPoolExecutor(SMART_TURN_THREADS, thread_name_prefix="smart-turn")

    def warm_up(self) -> None:
        """Load both models and run each once on its threads (which all start now)."""
        vad = SileroVAD(self, sample_rate=16000)
        vad.set_sample_rate(16000)  # as a pipeline's start does: voice_confidence needs it
        window = np.zeros(vad.num_frames_required(), dtype=np.int16).tobytes()
        self.vad_queue.submit(vad.voice_confidence, window).result()
        turn = SmartTurn(self, sample_rate=16000)
        silence = np.zeros(16000, dtype=np.float32)
        runs = [
            self.smart_turn_queue.submit(predict_endpoint, turn, silence)
            for _ in range(SMART_TURN_THREADS)
        ]
        for run in runs:
            run.result()


class _SharedSileroModel(SileroOnnxModel):
    """pipecat's Silero wrapper (this analyzer's recurrent state) over the process's session.

    ``SileroOnnxModel.__init__`` would load a session of its own: this sets
    what it sets, with the shared one.
    """

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SileroVAD(SileroVADOnModel):
    """pipecat's Silero VAD on the process's model and the process's VAD thread.

    ``SileroVADAnalyzer.__init__`` loads a model and ``VADAnalyzer.analyze_audio``
    sends every frame through a thread of the analyzer's own. Would retire
    this: a ``SileroVADAnalyzer`` that takes a model (or session) and an
    executor, and a VAD event that says at which sample the speech started
    and stopped.
    """

    def __init__(
        self,
        models: TurnModels,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
    ):
        super().__init__(_SharedSileroModel(models.silero), sample_rate=sample_rate, params=params)
        self._queue = models.vad_queue
        # Samples heard so far, and where the user last started and stopped
        # speaking as pipecat's VAD controller sees it (from SPEAKING to QUIET):
        # SmartTurn places its segment by them (see SmartTurn.heard_at).
        self.samples_heard = 0
        self.speech_started_at = 0
        self.speech_stopped_at = 0
        self._speaking = False

    async def analyze_audio(self, buffer: bytes) -> VADState:
        self.samples_heard += len(buffer) // 2
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(self._queue, self.run_analyzer, buffer)
        if state == VADState.SPEAKING and not self._speaking:
            self._speaking, self.speech_started_at = True, self.samples_heard
        elif state == VADState.QUIET and self._speaking:
            self._speaking, self.speech_stopped_at = False, self.samples_heard
        return state


class SmartTurn(SmartTurnOnSession):
    """pipecat's Smart Turn v3 on the process's model and thread, hearing what it would when idle.

    ``LocalSmartTurnAnalyzerV3.__init__`` loads a model and ``BaseSmartTurn``
    starts a thread per analyzer (``_model_executor``). pipecat cuts the
    segment it judges by when frames and the VAD's news reach it; here by
    where they are in the audio (:meth:`append_audio`,
    :meth:`analyze_end_of_turn`), so under load Smart Turn hears the same
    audio, and gives the same verdict, as with one session on an idle machine.
    Would retire this: an analyzer that takes a session and an executor, and
    times its buffer by samples and by the VAD's own transitions.
    """

    def __init__(
        self,
        models: TurnModels,
        *,
        vad: SileroVAD | None = None,
        sample_rate: int | None = None,
        params: SmartTurnParams | None = None,
    ):
        super().__init__(
            models.smart_turn, models.smart_turn_queue, sample_rate=sample_rate, params=params
        )
        # The VAD analysing the same frames just before they reach this
        # analyzer (the user aggregator runs it first), if it is ours.
        self._vad = vad
        # The audio clock: samples appended so far. A chunk's time is
        # AUDIO_CLOCK_ORIGIN + samples before it / rate, computed afresh each
        # time, so the same sample always gets the same time.
        self._samples = 0

    def heard_at(self, sample: int) -> float | None:
        """The audio-clock time of the VAD's ``sample``, if the VAD heard it lately.

        The VAD's news (speech started, stopped) reaches the turn strategy
        through the user aggregator's queue, behind the frames already
        waiting there: one frame late on an idle machine, up to five at 20
        sessions. Both count the same frames, so the latest chunk here ends
        where the VAD's count is now. News older than ``NEWS_LAG_SECS`` is
        not this news (pipecat's controller can also end speech on its own,
        when audio stops arriving): None.
        """
        if self._vad is None:
            return None
        ago = self._vad.samples_heard - sample
        if not 0 <= ago <= NEWS_LAG_SECS * self.sample_rate:
            return None
        return self._time_of(self._samples - ago)

    def _time_of(self, sample: int) -> float:
        return AUDIO_CLOCK_ORIGIN + sample / self.sample_rate

    async def analyze_end_of_turn(self) -> tuple[EndOfTurnState, MetricsData | None]:
        """``BaseSmartTurn.analyze_end_of_turn``, judging the audio up to where the VAD went quiet.

        The turn strategy asks when the VAD's stop reaches it: on an idle
        machine right after the frame that ended the speech, under load a few
        frames of silence later, and a longer tail of silence can change the
        verdict of a question Smart Turn is unsure of.
        """
        heard, vad = self.audio_buffer, self._vad
        end = None
        if vad is not None and vad.speech_stopped_at > vad.speech_started_at:
            end = self.heard_at(vad.speech_stopped_at)
        if end is not None:
            heard = [entry for entry in heard if entry[0] < end]
        loop = asyncio.get_running_loop()
        state, result = await loop.run_in_executor(
            self.executor, self.process_speech_segment, heard
        )
        if state == EndOfTurnState.COMPLETE:
            self.clear()
        return state, result

    def append_audio(self, buffer: bytes, is_speech: bool) -> EndOfTurnState:
        """``BaseSmartTurn.append_audio``, with each chunk timed by the audio before it.

        pipecat stamps a chunk with ``time.monotonic()`` as it is appended, and
        cuts the segment it judges at the speech's start minus
        ``pre_speech_ms`` and the VAD's start delay by those stamps. Frames that
        queued behind a stalled event loop arrive together and get one stamp,
        so the cut moves by the stall: the model hears less of the quiet before
        the question, or loses its first words. Timed by samples, the segment
        depends on the audio alone, as it does on an idle machine.
        """
        chunk = np.frombuffer(buffer, dtype=np.int16)
        at = self._time_of(self._samples)
        self._samples += len(chunk)
        self.audio_buffer.append((at, chunk))
        if is_speech:
            self.silence_ms = 0
            self.speech_triggered = True
            if self.speech_start_time == 0:
                # Where the strategy would have heard the start on an idle machine.
                started = self.heard_at(self._vad.speech_started_at) if self._vad else None
                self.speech_start_time = at if started is None else started
        elif self.speech_triggered:
            self.silence_ms += len(chunk) * 1000 / self.sample_rate
            if self.silence_ms >= self.stop_ms:
                self.clear()
                return EndOfTurnState.COMPLETE
        else:  # keep no more before the speech than a segment can use
            keep = self.params.pre_speech_ms / 1000 + self.params.stop_secs
            keep += self.params.max_duration_secs
            while self.audio_buffer and self.audio_buffer[0][0] < at - keep:
                self.audio_buffer.pop(0)
        return EndOfTurnState.INCOMPLETE
