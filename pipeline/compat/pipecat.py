"""pipecat's internals we rely on, under names that say what they are.

Each base class here exposes a pipecat class's private state and hooks as public
properties and methods (``audio_buffer`` for ``_audio_buffer``,
``on_user_stopped_speaking`` for ``_handle_user_stopped_speaking``), so our
subclasses read naturally and a pipecat release that renames one breaks here,
in one place, and in ``tests/test_compat_contract.py`` first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer
from pipecat.services.elevenlabs.stt import ElevenLabsRealtimeSTTService
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.turns.speculation_gate import SpeculationGate
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy

from pipeline.compat import Reliance

_SEGMENTED = "pipecat.services.stt_service.SegmentedSTTService"
_STOP = "pipecat.turns.user_stop.TurnAnalyzerUserTurnStopStrategy"
_HOOK = "a public hook on SegmentedSTTService for the VAD's start and stop of an utterance"
_STOP_STATE = "a public view of the strategy's turn state, or speculation on a pause upstream"

CONTRACT = [
    Reliance(
        "pipecat",
        _SEGMENTED,
        "_audio_buffer",
        "the utterance's audio so far: transcribed at a pause, cut into blocks, shown as interim",
        "a public read of the open segment's audio",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        _SEGMENTED,
        "_segment_queue",
        "where finished segments wait for run_stt: we queue eager segments and closed blocks",
        "a public way to queue a segment (with our own payload) for run_stt",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        _SEGMENTED,
        "_user_speaking",
        "whether the VAD has the user speaking (set false when an eager pass ends the utterance)",
        "a public read-only property; the eager commit as a SegmentedSTTService feature",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.services.stt_service.STTService",
        "_user_id",
        "the user id pipecat puts on its own TranscriptionFrames, for ours to match",
        "a public user_id property",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        _SEGMENTED,
        "_trailing_silence",
        "the silence pipecat appends to a segment, so an eager pass hears what the commit would",
        "a public segment-for-transcription helper",
        params=("self",),
    ),
    Reliance(
        "pipecat",
        "pipecat.services.stt_service.STTService",
        "_record_stt_audio_usage",
        "bills the audio of our extra transcriptions (eager passes, blocks) as pipecat bills its",
        "a public usage-recording method",
        params=("self", "audio"),
    ),
    Reliance(
        "pipecat",
        _SEGMENTED,
        "_handle_user_started_speaking",
        "the local STT opens a new utterance's blocks and interim state here",
        _HOOK,
        params=("self", "frame"),
    ),
    Reliance(
        "pipecat",
        _SEGMENTED,
        "_handle_user_stopped_speaking",
        "commits an eager transcript at the VAD stop instead of transcribing the segment again",
        _HOOK,
        params=("self", "frame"),
    ),
    Reliance(
        "pipecat",
        _STOP,
        "_vad_user_speaking",
        "a transcript of an earlier segment, arriving while the user speaks on, must not end "
        "the turn",
        _STOP_STATE,
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        _STOP,
        "_transcript_finalized",
        "cleared again for such a transcript (pipecat clears it only at the VAD start)",
        "pipecat clearing it itself for a transcript that arrives mid-speech",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        _STOP,
        "_vad_stopped",
        "speculation starts once the VAD stopped and Smart Turn said the turn is not complete",
        _STOP_STATE,
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        _STOP,
        "_turn_complete",
        "as above: only an undecided turn is answered early",
        _STOP_STATE,
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        _STOP,
        "_handle_vad_user_stopped_speaking",
        "speculation starts right after pipecat handles the VAD stop",
        "an event on the strategy for 'VAD stopped, turn undecided'",
        params=("self", "frame"),
    ),
    Reliance(
        "pipecat",
        _STOP,
        "_reset",
        "a turn that ended any other way withdraws its speculation",
        "a public per-turn reset hook (or a turn-ended event)",
        params=("self",),
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.vad.vad_analyzer.VADAnalyzer",
        "_vad_stopping_count",
        "how long the VAD has been hearing silence: a pause is announced 160 ms into it",
        "a VAD event or a public count of the stopping windows",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.services.llm_service.LLMService",
        "_speculation_gate",
        "replaced by ours, which records each speculation's fate for the timeline",
        "a speculation_gate= parameter on LLMService (pipecat builds its own, taking none)",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.turns.speculation_gate.SpeculationGate",
        "_discard",
        "drops a speculative reply the provider failed on, as a withdrawal does",
        "a public discard method on SpeculationGate",
        params=("self",),
    ),
    Reliance(
        "pipecat",
        "pipecat.services.llm_service.LLMService",
        "_push_llm_text",
        "the local LLM pushes its tokens as pipecat's own LLM services do",
        "a public push-a-token method on LLMService",
        params=("self", "text"),
    ),
    Reliance(
        "pipecat",
        "pipecat.services.tts_service.TTSService",
        "_stream_audio_frames_from_iterator",
        "turns a streamed WAV or PCM body into audio frames (local Piper, Groq's TTS)",
        "a public audio-stream helper on TTSService",
        params=("self", "iterator", "strip_wav_header", "in_sample_rate", "context_id"),
    ),
    Reliance(
        "pipecat",
        "pipecat.services.openai.base_llm.BaseOpenAILLMService",
        "_client",
        "closed at cleanup: pipecat leaves the client's keep-alive sockets to the GC",
        "pipecat closing its clients in cleanup()",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.services.whisper.base_stt.BaseWhisperSTTService",
        "_client",
        "replaced by a client that fails fast (the SDK retries twice), and closed at cleanup",
        "a create_client hook like BaseOpenAILLMService's",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.services.groq.tts.GroqTTSService",
        "_client",
        "replaced by a client that fails fast and knows the base URL; streamed from, closed",
        "base_url/timeout parameters on GroqTTSService, and closing in cleanup()",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.services.websocket_service.WebsocketService",
        "_websocket",
        "the open socket: its close reason, and ElevenLabs' flush message",
        "a public close-reason on the connection error, and a flush() on ElevenLabsTTSService",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.services.websocket_service.WebsocketService",
        "_disconnecting",
        "a drop while we disconnect on purpose is not reported",
        "an on_connection_lost event that is not fired for our own disconnect",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.services.websocket_service.WebsocketService",
        "_verify_connection",
        "keeps the server's close reason ('1008 Invalid API key') for the error the visitor sees",
        "the close reason in pipecat's own reconnection error",
        params=("self",),
    ),
    Reliance(
        "pipecat",
        "pipecat.services.websocket_service.WebsocketService",
        "_maybe_try_reconnect",
        "a drop mid-turn is reported (pipecat reconnects silently and the turn is lost)",
        "an on_connection_lost event on WebsocketService",
        params=("self", "error_message", "report_error", "error"),
    ),
    Reliance(
        "pipecat",
        "pipecat.services.elevenlabs.tts.ElevenLabsTTSService",
        "_send_text",
        "flushes after the first phrase and each sentence, so speech starts before 120 chars",
        "a flush policy option on ElevenLabsTTSService",
        params=("self", "text", "context_id"),
    ),
    Reliance(
        "pipecat",
        "pipecat.services.elevenlabs.stt.ElevenLabsRealtimeSTTService",
        "_process_response",
        "a commit never answered is reported instead of waiting for ever",
        "a transcript timeout in ElevenLabsRealtimeSTTService",
        params=("self", "data"),
    ),
    Reliance(
        "pipecat",
        "pipecat.pipeline.worker.PipelineWorker",
        "_tracing_context",
        "the session's services parent their spans on one context of ours, across generations",
        "a tracing_context= parameter on PipelineWorker",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.local_smart_turn_v3.LocalSmartTurnAnalyzerV3",
        "_predict_endpoint",
        "runs the model once at start-up (warm-up, and the probe that it can run here)",
        "a public predict/warm-up method on the analyzer",
        params=("self", "audio_array"),
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.vad.silero.SileroVADAnalyzer",
        "_model",
        "SileroVADAnalyzer.__init__ loads a model per analyzer: ours share one session per process",
        "a SileroVADAnalyzer that takes a model (or session) and an executor",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.vad.silero.SileroVADAnalyzer",
        "_windows_since_reset",
        "SileroVADAnalyzer.__init__ loads a model per analyzer: ours share one session per process",
        "a SileroVADAnalyzer that takes a model (or session) and an executor",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.vad.silero.SileroVADAnalyzer",
        "_low_confidence_windows",
        "SileroVADAnalyzer.__init__ loads a model per analyzer: ours share one session per process",
        "a SileroVADAnalyzer that takes a model (or session) and an executor",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.vad.vad_analyzer.VADAnalyzer",
        "_run_analyzer",
        "each VAD step runs on the process's VAD thread, not one thread per analyzer",
        "a SileroVADAnalyzer that takes a model (or session) and an executor",
        params=("self", "buffer"),
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.local_smart_turn_v3.LocalSmartTurnAnalyzerV3",
        "_log_data",
        "LocalSmartTurnAnalyzerV3.__init__ loads a model: ours share one session",
        "an analyzer that takes a session and an executor",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.local_smart_turn_v3.LocalSmartTurnAnalyzerV3",
        "_session",
        "as above",
        "as above",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.base_smart_turn.BaseSmartTurn",
        "_model_executor",
        "the model runs on the process's Smart Turn threads, not a thread per analyzer",
        "as above",
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.base_smart_turn.BaseSmartTurn",
        "_audio_buffer",
        "BaseSmartTurn.append_audio is re-implemented to time chunks by samples, not the clock",
        "an analyzer that times its buffer by samples and the VAD's own transitions",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.base_smart_turn.BaseSmartTurn",
        "_speech_triggered",
        "BaseSmartTurn.append_audio is re-implemented to time chunks by samples, not the clock",
        "an analyzer that times its buffer by samples and the VAD's own transitions",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.base_smart_turn.BaseSmartTurn",
        "_speech_start_time",
        "BaseSmartTurn.append_audio is re-implemented to time chunks by samples, not the clock",
        "an analyzer that times its buffer by samples and the VAD's own transitions",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.base_smart_turn.BaseSmartTurn",
        "_silence_ms",
        "BaseSmartTurn.append_audio is re-implemented to time chunks by samples, not the clock",
        "an analyzer that times its buffer by samples and the VAD's own transitions",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.base_smart_turn.BaseSmartTurn",
        "_stop_ms",
        "BaseSmartTurn.append_audio is re-implemented to time chunks by samples, not the clock",
        "an analyzer that times its buffer by samples and the VAD's own transitions",
        on_instance=True,
    ),
    Reliance(
        "pipecat",
        "pipecat.audio.turn.smart_turn.base_smart_turn.BaseSmartTurn",
        "_process_speech_segment",
        "the verdict on a segment cut where the VAD went quiet, by the audio's clock",
        "an analyzer that times its buffer by samples and the VAD's own transitions",
        params=("self", "audio_buffer"),
    ),
]


class SegmentedSTT(SegmentedSTTService):
    """``SegmentedSTTService`` with the state and hooks we extend, under public names.

    Put it before a provider's ``SegmentedSTTService`` subclass in the bases;
    override :meth:`on_user_started_speaking` / :meth:`on_user_stopped_speaking`
    (calling ``super()``) instead of pipecat's private handlers.
    """

    @property
    def audio_buffer(self) -> bytearray:
        return self._audio_buffer

    @property
    def segment_queue(self) -> asyncio.Queue:
        return self._segment_queue

    @property
    def user_speaking(self) -> bool:
        return self._user_speaking

    @user_speaking.setter
    def user_speaking(self, speaking: bool) -> None:
        self._user_speaking = speaking

    @property
    def user_id(self) -> str:
        return self._user_id

    def trailing_silence(self) -> bytes:
        return self._trailing_silence()

    def record_audio_usage(self, audio: bytes) -> None:
        self._record_stt_audio_usage(audio)

    async def _handle_user_started_speaking(self, frame):
        await self.on_user_started_speaking(frame)

    async def _handle_user_stopped_speaking(self, frame):
        await self.on_user_stopped_speaking(frame)

    async def on_user_started_speaking(self, frame) -> None:
        await super()._handle_user_started_speaking(frame)

    async def on_user_stopped_speaking(self, frame) -> None:
        await super()._handle_user_stopped_speaking(frame)


class TurnAnalyzerStopStrategy(TurnAnalyzerUserTurnStopStrategy):
    """``TurnAnalyzerUserTurnStopStrategy`` with its turn state and hooks under public names."""

    @property
    def vad_user_speaking(self) -> bool:
        return self._vad_user_speaking

    @property
    def vad_stopped(self) -> bool:
        return self._vad_stopped

    @property
    def turn_complete(self) -> bool:
        return self._turn_complete

    def unfinalize_transcript(self) -> None:
        """The transcript in so far does not cover what the user is saying now."""
        self._transcript_finalized = False

    async def _handle_vad_user_stopped_speaking(self, frame):
        await self.on_vad_user_stopped_speaking(frame)

    async def _reset(self):
        await self.on_reset()

    async def on_vad_user_stopped_speaking(self, frame) -> None:
        await super()._handle_vad_user_stopped_speaking(frame)

    async def on_reset(self) -> None:
        """The turn is over (ended, interrupted, or the session stopped)."""
        await super()._reset()


class DiscardingSpeculationGate(SpeculationGate):
    """``SpeculationGate`` whose discard of the held speculation is callable by a subclass."""

    def discard_speculation(self) -> list:
        return self._discard()


def install_speculation_gate(llm: LLMService, gate: SpeculationGate) -> None:
    """Make ``llm`` hold and release speculative replies through ``gate`` instead of its own."""
    llm._speculation_gate = gate


def vad_stopping_windows(vad: VADAnalyzer) -> int:
    """How many analysis windows the VAD has been hearing silence in, while STOPPING."""
    return vad._vad_stopping_count


def push_llm_text(llm: LLMService, text: str):
    """Push ``text`` as the LLM service would push a token it generated."""
    return llm._push_llm_text(text)


def stream_tts_audio(tts: TTSService, chunks: AsyncIterator[bytes], **kwargs):
    """Audio frames for ``chunks``, as pipecat's own HTTP TTS services make them."""
    return tts._stream_audio_frames_from_iterator(chunks, **kwargs)


def service_client(service):
    """The SDK client a pipecat service calls its provider through (closed at cleanup)."""
    return service._client


def replace_client(service, client) -> None:
    """Make ``service`` call its provider through ``client`` (ours fails fast, no retries)."""
    service._client = client


class WebsocketHooks:
    """Mix in before a pipecat ``WebsocketService`` subclass: its connection state and hooks.

    Override :meth:`verify_connection` / :meth:`maybe_try_reconnect` (calling
    ``super()``) instead of pipecat's private ones.
    """

    @property
    def websocket(self):
        return self._websocket  # type: ignore[attr-defined]

    @property
    def disconnecting(self) -> bool:
        return self._disconnecting  # type: ignore[attr-defined]

    async def _verify_connection(self) -> bool:
        return await self.verify_connection()

    async def _maybe_try_reconnect(self, error_message, report_error, error=None):
        return await self.maybe_try_reconnect(error_message, report_error, error)

    async def verify_connection(self) -> bool:
        return await super()._verify_connection()  # type: ignore[misc]

    async def maybe_try_reconnect(self, error_message, report_error, error=None):
        return await super()._maybe_try_reconnect(error_message, report_error, error)  # type: ignore[misc]


class ElevenLabsTTS(WebsocketHooks, ElevenLabsTTSService):
    """``ElevenLabsTTSService`` with a public hook on each text chunk it sends."""

    async def _send_text(self, text: str, context_id: str):
        await self.send_text(text, context_id)

    async def send_text(self, text: str, context_id: str) -> None:
        await super()._send_text(text, context_id)


class ElevenLabsRealtimeSTT(WebsocketHooks, ElevenLabsRealtimeSTTService):
    """``ElevenLabsRealtimeSTTService`` with a public hook on each message from the server."""

    async def _process_response(self, data: dict):
        await self.on_response(data)

    async def on_response(self, data: dict) -> None:
        await super()._process_response(data)


def set_worker_tracing_context(worker, context) -> None:
    """Make the services of ``worker`` (a ``PipelineWorker``) parent their spans on ``context``."""
    worker._tracing_context = context


def predict_endpoint(analyzer, audio):
    """Smart Turn's verdict on ``audio`` (float32 at 16 kHz), run on the caller's thread."""
    return analyzer._predict_endpoint(audio)


class SileroVADOnModel(SileroVADAnalyzer):
    """``SileroVADAnalyzer`` on a model we give it (its ``__init__`` loads a model of its own).

    Sets what ``SileroVADAnalyzer.__init__`` sets, around ``model``.
    """

    def __init__(self, model, *, sample_rate: int | None = None, params=None):
        VADAnalyzer.__init__(self, sample_rate=sample_rate, params=params)
        self._model = model
        self._windows_since_reset = 0
        self._low_confidence_windows = 0

    def run_analyzer(self, buffer: bytes):
        """One synchronous step of ``VADAnalyzer.analyze_audio`` (for our own executor)."""
        return self._run_analyzer(buffer)


class SmartTurnOnSession(LocalSmartTurnAnalyzerV3):
    """``LocalSmartTurnAnalyzerV3`` on an ONNX session and a thread we give it.

    Its ``__init__`` loads a model, and ``BaseSmartTurn`` starts a thread per
    analyzer; this sets what they set around ``session`` and ``executor``, and
    exposes the buffer state a subclass re-implementing ``append_audio`` needs.
    """

    def __init__(self, session, executor, *, sample_rate: int | None = None, params=None):
        BaseSmartTurn.__init__(self, sample_rate=sample_rate, params=params)
        self._log_data = False  # pipecat's debugging aid: WAV files of every segment
        self._session = session
        self._shared_executor = executor

    @property
    def _model_executor(self):
        return self._shared_executor

    @property
    def executor(self):
        """The thread (pool) the model runs on."""
        return self._shared_executor

    @property
    def audio_buffer(self) -> list:
        """(time, int16 chunk) pairs, oldest first."""
        return self._audio_buffer

    @property
    def speech_triggered(self) -> bool:
        return self._speech_triggered

    @speech_triggered.setter
    def speech_triggered(self, triggered: bool) -> None:
        self._speech_triggered = triggered

    @property
    def speech_start_time(self) -> float:
        return self._speech_start_time

    @speech_start_time.setter
    def speech_start_time(self, at: float) -> None:
        self._speech_start_time = at  # type: ignore[assignment]

    @property
    def silence_ms(self) -> float:
        return self._silence_ms

    @silence_ms.setter
    def silence_ms(self, ms: float) -> None:
        self._silence_ms = ms  # type: ignore[assignment]

    @property
    def stop_ms(self) -> float:
        return self._stop_ms

    def process_speech_segment(self, audio_buffer):
        """Smart Turn's verdict on the buffered segment (blocking: run it on the executor)."""
        return self._process_speech_segment(audio_buffer)
