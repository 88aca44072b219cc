"""Build one generation of a session's pipecat pipeline from a :class:`SessionConfig`.

    transport in -> STT -> user turn (Silero VAD + Smart Turn) -> LLM -> chunker -> TTS
                 -> transport out (real-time paced) -> assistant context

The STT sits before the user aggregator so that it sees the audio; the
aggregator runs the VAD and broadcasts its speaking frames both ways, which is
how the segmented STT learns where an utterance starts and ends. The
assistant aggregator sits after the output so that it records only the words
whose audio actually played (an interrupted reply keeps only what was heard).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.filters.function_filter import FunctionFilter
from pipecat.services.llm_service import LLMService
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.turns.user_stop import (
    BaseUserTurnStopStrategy,
    SpeechTimeoutUserTurnStopStrategy,
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from pipeline import events as ev
from pipeline.chunking import first_clause_chunker
from pipeline.compat.pipecat import install_speculation_gate
from pipeline.config import SessionConfig
from pipeline.observers import EventSink, SessionObservers, UIEventObserver, latency_observer
from pipeline.providers.local.models import LocalModels
from pipeline.providers.registry import PROVIDERS, capabilities
from pipeline.speculation import (
    EagerFromPartials,
    LedgerSpeculationGate,
    PauseAwareSileroVAD,
    SpeculationLedger,
    SpeculativeSmartTurnStopStrategy,
    UserPausedFrame,
    UserResumedFrame,
)
from pipeline.switcher import TurnActivity
from pipeline.telemetry import SessionTelemetry
from pipeline.tools.installer import attach as attach_tools
from pipeline.transport import FastRTCTransport, SessionOutbox
from pipeline.turn_models import SileroVAD, SmartTurn, TurnModels
from pipeline.vad_trace import record_vad_confidence


def transport_params(config: SessionConfig) -> TransportParams:
    return TransportParams(
        audio_in_enabled=True,
        audio_in_sample_rate=config.input_sample_rate,
        audio_out_enabled=True,
        audio_out_sample_rate=config.output_sample_rate,
        # Silence after the session ends would only delay teardown.
        audio_out_end_silence_secs=0,
    )


def _turn_strategies(
    config: SessionConfig, turn_models: TurnModels, vad: SileroVAD, ledger: SpeculationLedger
) -> UserTurnStrategies:
    stop: BaseUserTurnStopStrategy
    if config.smart_turn:
        analyzer = SmartTurn(
            turn_models, vad=vad, params=SmartTurnParams(stop_secs=config.turn_fallback_secs)
        )
        if config.speculative:
            stop = SpeculativeSmartTurnStopStrategy(turn_analyzer=analyzer, ledger=ledger)
        else:
            stop = TurnAnalyzerUserTurnStopStrategy(turn_analyzer=analyzer)
    else:
        stop = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=config.vad_stop_secs)
    return UserTurnStrategies(stop=[stop])


def _speculative_stop(strategies: UserTurnStrategies) -> SpeculativeSmartTurnStopStrategy:
    """The stop strategy :func:`_turn_strategies` makes for a speculating session."""
    stop = strategies.stop[0] if strategies.stop else None
    if not isinstance(stop, SpeculativeSmartTurnStopStrategy):
        raise TypeError(f"a speculating session has no speculative stop strategy: {stop!r}")
    return stop


async def _not_microphone_audio(frame: Frame) -> bool:
    return not isinstance(frame, InputAudioRawFrame)


def _microphone_stops_here() -> FunctionFilter:
    """Drop the microphone's frames once the user turn has heard them.

    pipecat forwards every frame to the end of the pipeline; nothing after the
    user aggregator reads input audio, and passing 50 frames a second through
    five more processors (and their observers) was most of an idle session's CPU.
    Direct mode: the check is too cheap to deserve a task and queue of its own.
    """
    return FunctionFilter(
        filter=_not_microphone_audio, filter_system_frames=True, enable_direct_mode=True
    )


@dataclass
class PipelineGeneration:
    """One pipeline generation: what a session runs until the next provider switch or its end."""

    worker: PipelineWorker
    transport: BaseTransport
    context: LLMContext
    activity: TurnActivity
    config: SessionConfig


def build_generation(
    config: SessionConfig,
    models: LocalModels,
    outbox: SessionOutbox,
    sink: EventSink,
    context: LLMContext | None = None,
    telemetry: SessionTelemetry | None = None,
    *,
    transport: BaseTransport | None = None,
    rtvi: bool = False,
) -> PipelineGeneration:
    """One pipeline generation; ``context`` carries the conversation over from the previous one.

    With ``telemetry`` tracing, pipecat's service spans join the session's trace
    (its turns replace pipecat's own turn tracking: see ``pipeline.telemetry.tracing``).

    The far end is the visitor's fastrtc connection (through ``outbox``) unless
    ``transport`` says otherwise: the benchmark's evals put pipecat's eval
    transport there, with ``rtvi`` on, since its client (the eval harness)
    speaks RTVI and reads the conversation from pipecat's RTVI messages.
    """
    turn_models = models.turn  # Silero VAD and Smart Turn: no session works without them
    services = {
        stage: PROVIDERS[choice.provider].build(stage, choice, config.keys, config, models)
        for stage, choice in config.choices().items()
    }
    stt, llm, tts = services["stt"], services["llm"], services["tts"]
    choices = config.choices()
    stt_streams = capabilities("stt", choices["stt"]).streaming
    tts_capabilities = capabilities("tts", choices["tts"])
    transport = transport or FastRTCTransport(
        transport_params(config), outbox, config.output_lead_secs
    )
    context = context or LLMContext()
    if isinstance(llm, LLMService):
        attach_tools(config, llm, context, sink)  # the demo tools, if this LLM calls them
    ledger = SpeculationLedger(sink)
    speculating = config.smart_turn and config.speculative
    vad_params = VADParams(stop_secs=config.vad_stop_secs)
    vad: SileroVAD
    if speculating:

        async def _paused():
            await _speculative_stop(strategies).user_paused()
            await user.broadcast_frame(UserPausedFrame)

        async def _resumed():
            await _speculative_stop(strategies).user_resumed()
            await user.broadcast_frame(UserResumedFrame)

        vad = PauseAwareSileroVAD(
            turn_models, params=vad_params, on_pause=_paused, on_resume=_resumed
        )
        if isinstance(llm, LLMService):
            install_speculation_gate(
                llm, LedgerSpeculationGate(ledger, name=f"{llm}::SpeculationGate")
            )
    else:
        vad = SileroVAD(turn_models, params=vad_params)
    record_vad_confidence(vad, sink)  # the timeline's VAD lane
    strategies = _turn_strategies(config, turn_models, vad, ledger)
    aggregators = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=vad, user_turn_strategies=strategies),
    )
    user, assistant = aggregators.user(), aggregators.assistant()

    @user.event_handler("on_user_turn_stopped")
    async def _on_user_turn(_aggregator, _strategy, message):
        if message.content:
            sink(ev.UserTurnText(time.time(), message.content))

    @assistant.event_handler("on_assistant_turn_stopped")
    async def _on_assistant_turn(_aggregator, message):
        sink(ev.BotTurnText(time.time(), message.content, interrupted=message.interrupted))

    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            *([EagerFromPartials()] if speculating and stt_streams else []),
            user,
            _microphone_stops_here(),
            llm,
            *([] if tts_capabilities.streamed_text else [first_clause_chunker()]),
            tts,
            transport.output(),
            assistant,
        ]
    )
    ui_observer = UIEventObserver(
        sink,
        output=transport.output(),
        stages={service.name: stage for stage, service in services.items()},
        providers={
            service.name: PROVIDERS[config.choices()[stage].provider].label
            for stage, service in services.items()
        },
        word_timing=tts_capabilities.word_timing,
        redact=config.keys.redact,
    )
    activity = TurnActivity()
    tracing = telemetry is not None and telemetry.tracing
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=config.input_sample_rate,
            audio_out_sample_rate=config.output_sample_rate,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=[
            SessionObservers(
                [*([ui_observer] if config.dashboard else []), latency_observer(sink), activity]
            )
        ],
        enable_rtvi=rtvi,
        idle_timeout_secs=config.idle_timeout_secs,
        cancel_runner_on_idle_timeout=False,
        enable_tracing=tracing,
        enable_turn_tracking=not tracing,
        conversation_id=telemetry.session_id if telemetry is not None and tracing else None,
    )
    if telemetry is not None and tracing:
        telemetry.attach(worker)
    return PipelineGeneration(
        worker=worker,
        transport=transport,
        context=context,
        activity=activity,
        config=config,
    )
