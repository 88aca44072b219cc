"""Silero VAD and Smart Turn for every session of the process: one ONNX session of each.

pipecat's analyzers each load their own model, so every session (and every
pipeline generation after a provider switch) paid a Silero and a Smart Turn
``InferenceSession`` (~60 ms of CPU and ~15 MB together), and each analyzer runs
its model on a thread of its own: Silero's for every 20 ms microphone frame.
Here the process holds one session of each model (onnxruntime's ``run`` is
thread-safe, and neither model keeps anything in its session: Silero's
recurrent state is in pipecat's ``SileroOnnxModel``, one per analyzer), and

- Silero runs inline, on the event loop: its ~0.1 ms of ONNX per 32 ms window
  costs less than handing each frame to a thread and waking the loop with the
  answer (that hand-over was a third of a session's VAD CPU);
- Smart Turn's inferences queue for one thread of the process, in order, each
  at full speed, rather than on a thread per session contending for two cores;
- Smart Turn's segment is cut by the audio's own clock (see
  :meth:`SmartTurn.append_audio`), so a stalled event loop no longer changes
  what it hears.

pipecat offers no way to hand an analyzer a model or a thread, so the two
classes below set the few private attributes pipecat's constructors would
have. ``tests/test_turn_models.py`` checks they set exactly those.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from importlib import resources

import numpy as np
import onnxruntime as ort
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroOnnxModel, SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

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
    def smart_turn_queue(self) -> ThreadPoolExecutor:
        """The one thread every session's Smart Turn inference runs on, first come first served."""
        with self._lock:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")

    def warm_up(self) -> None:
        """Load both models and run each once (Smart Turn on its thread, which starts now)."""
        vad = SileroVAD(self, sample_rate=16000)
        vad.set_sample_rate(16000)  # as a pipeline's start does: voice_confidence needs it
        vad.voice_confidence(np.zeros(vad.num_frames_required(), dtype=np.int16).tobytes())
        turn = SmartTurn(self, sample_rate=16000)
        silence = np.zeros(16000, dtype=np.float32)
        self.smart_turn_queue.submit(turn._predict_endpoint, silence).result()


class _SharedSileroModel(SileroOnnxModel):
    """pipecat's Silero wrapper (this analyzer's recurrent state) over the process's session.

    ``SileroOnnxModel.__init__`` would load a session of its own: this sets
    what it sets, with the shared one.
    """

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.reset_states()
        self.sample_rates = [8000, 16000]


class SileroVAD(SileroVADAnalyzer):
    """pipecat's Silero VAD on the process's model, analysed inline on the caller's thread.

    ``SileroVADAnalyzer.__init__`` loads a model and ``VADAnalyzer.analyze_audio``
    sends every frame through a thread of the analyzer's own. Would retire
    this: a ``SileroVADAnalyzer`` that takes a model (or session) and an
    option to analyse inline.
    """

    def __init__(
        self,
        models: TurnModels,
        *,
        sample_rate: int | None = None,
        params: VADParams | None = None,
    ):
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = _SharedSileroModel(models.silero)
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    async def analyze_audio(self, buffer: bytes) -> VADState:
        return self._run_analyzer(buffer)


class SmartTurn(LocalSmartTurnAnalyzerV3):
    """pipecat's Smart Turn v3 on the process's model and thread, its segment timed by the audio.

    ``LocalSmartTurnAnalyzerV3.__init__`` loads a model and ``BaseSmartTurn``
    starts a thread per analyzer (``_model_executor``). Would retire this: an
    analyzer that takes a session and an executor, and times its buffer by
    samples itself.
    """

    def __init__(
        self,
        models: TurnModels,
        *,
        sample_rate: int | None = None,
        params: SmartTurnParams | None = None,
    ):
        BaseSmartTurn.__init__(self, sample_rate=sample_rate, params=params)
        self._log_data = False  # pipecat's debugging aid: WAV files of every segment
        self._session = models.smart_turn
        self._queue = models.smart_turn_queue
        # The audio clock: the wall-clock time of the first chunk plus the
        # duration of all the audio appended since.
        self._audio_clock: float | None = None

    @property
    def _model_executor(self) -> ThreadPoolExecutor:
        return self._queue

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
        if self._audio_clock is None:
            self._audio_clock = time.monotonic()
        at = self._audio_clock
        self._audio_clock += len(chunk) / self.sample_rate
        self._audio_buffer.append((at, chunk))
        if is_speech:
            self._silence_ms = 0
            self._speech_triggered = True
            if self._speech_start_time == 0:
                self._speech_start_time = at
        elif self._speech_triggered:
            self._silence_ms += len(chunk) * 1000 / self.sample_rate
            if self._silence_ms >= self._stop_ms:
                self._clear(EndOfTurnState.COMPLETE)
                return EndOfTurnState.COMPLETE
        else:  # keep no more before the speech than a segment can use
            keep = self._params.pre_speech_ms / 1000 + self._params.stop_secs
            keep += self._params.max_duration_secs
            while self._audio_buffer and self._audio_buffer[0][0] < at - keep:
                self._audio_buffer.pop(0)
        return EndOfTurnState.INCOMPLETE
