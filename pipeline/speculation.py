"""Speculative turn-taking for a Silero VAD + Smart Turn stack, on pipecat's own machinery.

pipecat 1.14 answers an *eager* end of turn before the turn is confirmed: an
``EagerTranscriptionFrame`` starts an inference on a provisional context, the
LLM service's ``SpeculationGate`` holds its reply until a
``UserStoppedSpeakingFrame`` confirms the turn, and an
``EagerEndOfTurnCancelFrame`` discards it. Only STT services that predict turn
ends themselves (Deepgram Flux) produce eager transcripts, and
``EagerUserTurnStopStrategy`` assumes that service also decides the turn.

Here the VAD and Smart Turn decide, so the adaptation is small and keeps their
decision:

    Silero window goes quiet --> UserPausedFrame (both ways) --> STT transcribes now
                                                              (segmented: the buffer so far;
                                                               streaming: its latest partial)
                             <-- EagerTranscriptionFrame
    SpeculativeSmartTurnStopStrategy --> speculative inference (held by the gate)
    speech resumes            --> withdrawn (EagerEndOfTurnCancelFrame): nothing heard, nothing kept
    VAD stop + Smart Turn     --> same words ? released : withdrawn, answered anew

A segmented STT reuses its eager transcript as the committed one when no speech
came after the pause (the audio is the same words plus silence), so nothing is
transcribed twice. Smart Turn judging a pause "incomplete" also speculates, on
the transcript in hand: its 2 s fallback is then spent generating, not waiting.

:class:`SpeculationLedger` counts what happened for the dashboard: each
speculation started, adopted or discarded (and why), the reply tokens a
discarded one wasted, and how much earlier an adopted reply started.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger
from pipecat.audio.utils import pcm_to_wav
from pipecat.audio.vad.vad_analyzer import VADState
from pipecat.frames.frames import (
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    ErrorFrame,
    Frame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMTextFrame,
    SystemFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transcriptions.language import Language
from pipecat.turns.types import ProcessFrameResult, UserTurnSpeculation
from pipecat.turns.user_stop.eager_match_policy import EagerMatchPolicy, NormalizedMatch
from pipecat.utils.time import time_now_iso8601

from pipeline import events as ev
from pipeline.compat.pipecat import (
    DiscardingSpeculationGate,
    SegmentedSTT,
    TurnAnalyzerStopStrategy,
    vad_stopping_windows,
)
from pipeline.turn_models import SileroVAD, TurnModels

if TYPE_CHECKING:  # a mixin: what it is mixed into, for the type checker only
    from pipecat.services.stt_service import SegmentedSTTService as _EagerSegmentsBase
else:
    _EagerSegmentsBase = object

EventSink = Callable[[ev.Event], None]

# Silero judges 32 ms windows; a single quiet window between two words is
# common, two in a row much less so. Speculating on the second keeps the head
# start (the VAD stop comes at 0.2 s) without transcribing every breath.
PAUSE_WINDOWS = 2
SILERO_WINDOW_SECS = 512 / 16000


@dataclass
class UserPausedFrame(SystemFrame):
    """The user fell silent (a quiet VAD window), before the VAD stop confirms it."""


@dataclass
class UserResumedFrame(SystemFrame):
    """The user spoke again after a pause: whatever was started from it is void."""


PauseHandler = Callable[[], Awaitable[None]]


class PauseAwareSileroVAD(SileroVAD):
    """Silero VAD that also reports the first quiet windows and the speech that ends them.

    pipecat's VAD controller only reports the settled states (speaking, quiet);
    the in-between ``STOPPING`` state is where a pause begins, ``stop_secs``
    before the VAD stop. Reading it costs one comparison per audio frame.
    """

    def __init__(
        self, models: TurnModels, *, on_pause: PauseHandler, on_resume: PauseHandler, **kwargs
    ):
        super().__init__(models, **kwargs)
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._paused = False

    async def analyze_audio(self, buffer: bytes) -> VADState:
        state = await super().analyze_audio(buffer)
        if self._paused:
            # The pause stays open through the VAD stop (QUIET): only speech ends it.
            if state == VADState.SPEAKING:
                self._paused = False
                await self._on_resume()
        elif state == VADState.STOPPING and vad_stopping_windows(self) >= PAUSE_WINDOWS:
            self._paused = True
            await self._on_pause()
        return state


class SpeculationLedger:
    """What speculation did this session, reported as events: one start, one end each."""

    def __init__(self, sink: EventSink):
        self._sink = sink
        self._started_at: float | None = None
        self._tokens = 0
        # Withdrawals the strategy broadcast and the LLM's gate has yet to see.
        self._own_withdrawals = 0

    @property
    def open(self) -> bool:
        return self._started_at is not None

    def started(self, text: str) -> None:
        self._started_at = time.time()
        self._tokens = 0
        self._sink(ev.SpeculationStarted(self._started_at, text))

    def withdrawing(self) -> None:
        """The strategy is broadcasting a withdrawal (its reason is already recorded)."""
        self._own_withdrawals += 1

    def take_own_withdrawal(self) -> bool:
        if self._own_withdrawals:
            self._own_withdrawals -= 1
            return True
        return False

    def generated(self, text: str) -> None:
        """A reply token the speculative inference produced (held, not yet heard)."""
        if self.open:
            self._tokens += 1

    def adopted(self) -> None:
        if self._started_at is None:
            return
        now = time.time()
        saved_ms = (now - self._started_at) * 1000
        self._started_at = None
        self._sink(ev.SpeculationEnded(now, True, "confirmed", 0, 0, round(saved_ms, 1)))

    def discarded(self, reason: str) -> None:
        if self._started_at is None:
            return
        self._started_at = None
        # The TTS only ever receives released text, so a discarded reply cost
        # LLM tokens but no synthesis.
        self._sink(ev.SpeculationEnded(time.time(), False, reason, self._tokens, 0, 0.0))


class LedgerSpeculationGate(DiscardingSpeculationGate):
    """pipecat's gate, also counting the reply tokens a speculation produces.

    Installed as the LLM service's ``_speculation_gate`` (pipecat creates its
    own in ``LLMService.__init__`` and offers no parameter for it). It also
    notices the one withdrawal our strategy does not make: the LLM service's
    own, when a speculative inference wants a tool call.
    """

    def __init__(self, ledger: SpeculationLedger, **kwargs):
        super().__init__(**kwargs)
        self._ledger = ledger

    def process(self, frame: Frame, direction: FrameDirection):
        if direction == FrameDirection.UPSTREAM:
            if isinstance(frame, ErrorFrame) and self.is_speculating:
                return self._failed(frame)
        elif isinstance(frame, EagerEndOfTurnCancelFrame):
            if not self._ledger.take_own_withdrawal() and self.is_speculating:
                self._ledger.discarded("tool call")
        elif isinstance(frame, LLMTextFrame) and self.is_speculating:
            self._ledger.generated(frame.text)
        elif isinstance(frame, InterruptionFrame) and self.is_speculating:
            self._ledger.discarded("interrupted")
        return super().process(frame, direction)

    def _failed(self, error: ErrorFrame):
        """A guess the provider failed on is dropped quietly; the confirmed turn asks again.

        The user has not finished speaking: an error shown now would be about
        a request they never made, and the turn's own request reports it if
        the provider is still failing. The withdrawal goes upstream to the
        strategy, so that the confirmed turn runs its own inference.
        """
        logger.debug(f"{self}: the speculative inference failed, dropping it: {error.error}")
        self._ledger.discarded("provider error")
        return [*self.discard_speculation(), (EagerEndOfTurnCancelFrame(), FrameDirection.UPSTREAM)]


class SpeculativeSmartTurnStopStrategy(TurnAnalyzerStopStrategy):
    """Smart Turn decides the turn, as before; the reply is generated while it decides.

    The speculation half of pipecat's ``EagerUserTurnStopStrategy`` on top of
    ``TurnAnalyzerUserTurnStopStrategy``: that class assumes the STT service
    owns turn detection, which here is Silero + Smart Turn's job. The turn ends
    exactly when it did without speculation; only the inference moves earlier.
    """

    def __init__(
        self,
        *,
        ledger: SpeculationLedger,
        match_policy: EagerMatchPolicy | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._ledger = ledger
        self._match_policy = match_policy or NormalizedMatch()
        self._speculation: UserTurnSpeculation | None = None
        # Committed transcripts of this turn so far: a turn can span several
        # VAD segments, and the speculative context needs all of them.
        self._committed = ""
        # Whether the user is silent since a pause: an eager transcript that
        # arrives after they spoke again answers words they have not finished.
        self._paused = False
        # This turn's guess wanted a tool or failed: it is answered once confirmed.
        self._answer_when_confirmed = False

    async def user_paused(self) -> None:
        self._paused = True

    async def user_resumed(self) -> None:
        self._paused = False
        await self.withdraw("resumed")

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, TranscriptionFrame):
            # Before the base class sees it: it may end the turn on this very
            # frame, and the match is against everything committed.
            self._committed = _join(self._committed, frame.text)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            await self.withdraw("resumed")
        elif isinstance(frame, EagerEndOfTurnCancelFrame):
            # The LLM service withdrew the speculation itself (it wanted a
            # tool call, or the provider failed): the confirmed turn runs its
            # own inference, and guessing again this turn would ask again.
            self._speculation = None
            self._answer_when_confirmed = True
        result = await super().process_frame(frame)
        if isinstance(frame, TranscriptionFrame) and self.vad_user_speaking:
            # The transcript of an earlier segment, arriving while the user
            # speaks on (a slow STT): it does not cover what is being said, so
            # it must not let the next VAD stop end the turn before the new
            # segment's transcript is in (pipecat clears the flag only at the
            # VAD start, which came first here).
            self.unfinalize_transcript()
        if isinstance(frame, EagerTranscriptionFrame) and self._paused:
            await self._speculate(_join(self._committed, frame.text))
        elif isinstance(frame, TranscriptionFrame):
            await self._speculate_if_undecided()
        return result

    async def withdraw(self, reason: str) -> None:
        """Discard the speculation in flight (the user spoke again, or it no longer applies)."""
        speculation, self._speculation = self._speculation, None
        if speculation is None:
            return
        logger.debug(f"{self}: speculation withdrawn ({reason}): [{speculation.text}]")
        self._ledger.discarded(reason)
        self._ledger.withdrawing()
        await self.trigger_user_turn_speculation_cancelled()

    async def on_vad_user_stopped_speaking(self, frame):
        await super().on_vad_user_stopped_speaking(frame)
        await self._speculate_if_undecided()

    async def _speculate_if_undecided(self) -> None:
        """Smart Turn heard an unfinished sentence: answer what was said while it waits."""
        if self.vad_stopped and not self.turn_complete and self._committed:
            await self._speculate(self._committed)

    async def _speculate(self, text: str) -> None:
        if not text.strip() or self._answer_when_confirmed:
            return
        if self._speculation is not None:
            if self._match_policy.matches(self._speculation.text, text):
                return  # already answering these words
            await self.withdraw("transcript changed")
        self._speculation = UserTurnSpeculation(text=text)
        self._ledger.started(text)
        logger.debug(f"{self}: speculating on [{text}]")
        await self.trigger_user_turn_inference_triggered(speculation=self._speculation)

    async def trigger_user_turn_stopped(self, *, enable_user_speaking_frames: bool | None = None):
        speculation, self._speculation = self._speculation, None
        if speculation is not None and self._match_policy.matches(
            speculation.text, self._committed
        ):
            # The reply is already generated (or under way) on these words:
            # finalizing writes the turn to the context, and the
            # UserStoppedSpeakingFrame it emits releases the held reply.
            self._ledger.adopted()
            await self.trigger_user_turn_finalized(
                enable_user_speaking_frames=enable_user_speaking_frames,
                confirms_speculation=True,
            )
            return
        if speculation is not None:
            logger.debug(
                f"{self}: committed transcript differs "
                f"(eager: [{speculation.text}], committed: [{self._committed}])"
            )
            self._ledger.discarded("transcript changed")
            self._ledger.withdrawing()
            await self.trigger_user_turn_speculation_cancelled()
        await super().trigger_user_turn_stopped(
            enable_user_speaking_frames=enable_user_speaking_frames
        )

    async def on_reset(self):
        await super().on_reset()
        self._committed = ""
        self._answer_when_confirmed = False
        # A turn that ended some other way (the stop watchdog, an
        # interruption, the session's end) leaves nothing to answer.
        await self.withdraw("turn ended")


def _join(left: str, right: str) -> str:
    return f"{left} {right}".strip() if left else right.strip()


class EagerSegmentsMixin(SegmentedSTT):
    """For a ``SegmentedSTTService``: transcribe at the pause, reuse it at the VAD stop.

    Put it before the provider's ``SegmentedSTTService`` subclass in the
    bases. On :class:`UserPausedFrame` the audio so far is transcribed at once
    and an ``EagerTranscriptionFrame`` pushed if the VAD has not stopped yet;
    at the VAD stop, if the user did not speak since the pause, the segment is
    queued as an :class:`EagerSegment` (in order with the other segments) and
    committed with the eager text instead of sending the same words to the
    model again. :meth:`run_stt` (or a subclass's, via :meth:`committed_text`)
    turns it into the ``TranscriptionFrame``.

    Usage is reported per transcription, as a provider bills it: each eager
    pass is one (a pass dropped because the user went on was still sent and
    billed), a commit that reuses the eager text is none, and one transcribed
    anew is another.
    """

    _eager_task: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, UserPausedFrame) and self.user_speaking:
            logger.debug(f"{self}: the user paused, transcribing now")
            await self._drop_eager()
            self._eager_task = self.create_task(
                self._eager_pass(bytes(self.audio_buffer) + self.trailing_silence()),
                name="eager-transcript",
            )
        elif isinstance(frame, UserResumedFrame):
            await self._drop_eager()

    async def eager_transcript(self, audio: bytes) -> str | ErrorFrame:
        """The segment's transcript as :meth:`run_stt` gives it (or its error), unpushed."""
        texts = []
        async for frame in super().run_stt(audio):
            if isinstance(frame, TranscriptionFrame):
                texts.append(frame.text.strip())
            elif isinstance(frame, ErrorFrame):
                return frame
        return " ".join(t for t in texts if t)

    def eager_frame_text(self, text: str) -> str:
        """The eager transcript of the whole utterance (a subclass may prefix earlier blocks)."""
        return text

    async def committed_text(self, segment: EagerSegment) -> str | ErrorFrame:
        """The transcript of a segment an eager pass covered (transcribed anew if it raised).

        A provider's own error (a refused key, a request that timed out) is
        reported as the segment's, as it would have been without the pause:
        asking again would only make the user wait twice.
        """
        result = await segment.task
        if result is not None:
            return result
        await self._report_usage(bytes(segment))
        return await self.eager_transcript(self._segment_for_model(bytes(segment)))

    def _segment_for_model(self, pcm: bytes) -> bytes:
        return pcm_to_wav(pcm, self.sample_rate) if self.wants_wav_segments else pcm

    async def _report_usage(self, pcm: bytes) -> None:
        """One transcription of ``pcm``: the audio a provider bills for it."""
        self.record_audio_usage(pcm)
        await self.emit_stt_usage_metrics()

    async def _eager_pass(self, pcm: bytes) -> str | ErrorFrame | None:
        await self._report_usage(pcm)
        try:
            text = await self.eager_transcript(self._segment_for_model(pcm))
        except Exception as e:
            logger.debug(f"{self}: eager transcription failed, the VAD stop will retry: {e}")
            return None
        if isinstance(text, ErrorFrame):
            return text
        if text and self.user_speaking:
            # Still before the VAD stop: worth answering now. After it, the
            # committed transcript (this same text) follows at once anyway.
            await self.push_frame(
                EagerTranscriptionFrame(
                    self.eager_frame_text(text), self.user_id, time_now_iso8601(), Language.EN
                )
            )
        return text

    async def _drop_eager(self) -> None:
        if self._eager_task is not None:
            task, self._eager_task = self._eager_task, None
            await self.cancel_task(task)

    async def on_user_stopped_speaking(self, frame):
        task, self._eager_task = self._eager_task, None
        if task is None or not self.is_usable:
            await super().on_user_stopped_speaking(frame)
            return
        # No speech since the pause: the segment is the paused audio plus
        # silence, so its transcript is the eager one.
        logger.debug(f"{self}: the pause ended the utterance, committing its transcript")
        self.user_speaking = False
        pcm = bytes(self.audio_buffer) + self.trailing_silence()
        self.audio_buffer.clear()
        await self.segment_queue.put(EagerSegment(pcm, task))  # its usage: the eager pass's

    async def run_stt(self, audio: bytes):
        if isinstance(audio, EagerSegment):
            text = await self.committed_text(audio)
            if isinstance(text, ErrorFrame):
                yield text
            elif text:
                yield TranscriptionFrame(text, self.user_id, time_now_iso8601(), Language.EN)
            return
        async for frame in super().run_stt(audio):
            yield frame


class EagerSegment(bytes):
    """A finished segment (16-bit PCM) whose transcript an eager pass is producing or produced."""

    task: asyncio.Task

    def __new__(cls, pcm: bytes, task: asyncio.Task):
        segment = super().__new__(cls, pcm)
        segment.task = task
        return segment


class EagerFromPartials(FrameProcessor):
    """For a streaming STT: its latest partial transcript, from the pause on, is the eager one.

    Sits right after the STT. A streaming STT (ElevenLabs Scribe realtime) has
    most of the utterance's words as a partial when the user falls silent, and
    the rest in the partials that follow; the committed transcript comes after
    the provider's commit, at the VAD stop. So the partial in hand at the pause
    is offered at once, and each newer one until the commit (the strategy
    replaces a speculation whose words changed).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._partial = ""
        self._offered = ""
        self._paused = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterimTranscriptionFrame):
            self._partial = frame.text
            if self._paused:
                await self._offer()
        elif isinstance(frame, TranscriptionFrame):
            self._partial = self._offered = ""
            self._paused = False
        elif isinstance(frame, UserPausedFrame):
            self._paused = True
            await self._offer()
        elif isinstance(frame, UserResumedFrame):
            # The speculation on the offered words is withdrawn now: if the
            # user pauses again with no new partial, the same words are a new offer.
            self._paused = False
            self._offered = ""
        await self.push_frame(frame, direction)

    async def _offer(self) -> None:
        if self._partial.strip() and self._partial != self._offered:
            self._offered = self._partial
            await self.push_frame(
                EagerTranscriptionFrame(self._partial, "", time_now_iso8601(), Language.EN)
            )
