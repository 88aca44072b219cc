"""The dashboard's bookkeeping, folded from the same events, for metrics and spans to agree with it.

``ui.state.reduce`` decides which turn a figure belongs to, on which stack it
ran, and whether a barge-in or an interrupted request happened; the page shows
those answers. Metrics and spans are built in ``pipeline/`` (which never
imports the UI), so this module keeps the few fields those decisions read,
changed by the same events under the same rules: the turn count grows on
``UserTurnText``, a voice heard while the bot speaks is a barge-in that lasts
until the bot stops, a TTFB reported for a cut-off reply is left out of the
figures. ``tests/test_telemetry.py`` folds scripted and recorded sessions
through both and checks they agree.

A few attributes per event and no allocation: it runs for every event of
every session.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import events as ev

Stack = tuple[str, str, str]
# A turn's stack before any ProvidersChanged (ui.turnlog.UNKNOWN_STACK).
UNKNOWN_STACK: Stack = ("Local", "Local", "Local")


@dataclass(frozen=True)
class TTFBShare:
    """Where the dashboard files a TTFB: its turn, and whether it was for a cut-off reply."""

    turn: int
    interrupted: bool


class DashboardView:
    """What ``ui.state`` knows about turns, stacks and barge-ins, and nothing else."""

    def __init__(self) -> None:
        # User turns committed to the conversation: the dashboard's turn number.
        self.turns = 0
        self.user_turn_open = False
        # A reply is being prepared or spoken (the state's ``bot``).
        self.reply_active = False
        # The user spoke over a reply (or over one being prepared) that has not restarted.
        self.interrupting = False
        # The bot's audio is playing (the state's "speaking" status).
        self.speaking = False
        # When the user's voice was detected over the bot (a barge-in not yet stopped).
        self.barge_in_at: float | None = None
        # What the next turn runs on, and what the open turn opened on.
        self.stack: Stack | None = None
        self.turn_stack: Stack | None = None

    @property
    def usage_stack(self) -> Stack:
        """The stack usage is billed to: the open turn's, else the current one (``ui.turnlog``)."""
        return self.turn_stack or self.stack or UNKNOWN_STACK

    @property
    def speaking_turn(self) -> int:
        """The turn being spoken: the next number while the user's turn is still open."""
        return self.turns + 1 if self.user_turn_open else self.turns

    def ttfb_share(self, event: ev.ServiceTTFB) -> TTFBShare:
        """As ``ui.state._ttfb``: transcribing (and a speculative reply) is the open turn's."""
        if event.stage == "stt" or (self.user_turn_open and not self.interrupting):
            return TTFBShare(self.speaking_turn, False)
        return TTFBShare(self.turns, self.interrupting)

    def barge_in_stop(self, event: ev.Event) -> float | None:
        """Seconds from the voice over the bot to its audio stopping, when ``event`` ends one."""
        if isinstance(event, ev.BotStoppedSpeaking) and self.barge_in_at is not None:
            return max(0.0, event.t - self.barge_in_at)
        return None

    def fold(self, event: ev.Event) -> None:
        """Apply ``event`` (call after reading what it means under the state before it)."""
        match event:
            case ev.UserStartedSpeaking():
                if self.speaking:
                    self.barge_in_at = event.t
                self.turn_stack = self.stack or UNKNOWN_STACK
                self.interrupting = self.interrupting or self.speaking or self.reply_active
                self.user_turn_open = True
                self.speaking = False
            case ev.BotStoppedSpeaking():
                self.barge_in_at = None
                self.speaking = False
            case ev.BotStartedSpeaking():
                self.barge_in_at = None
                self.speaking = True
            case ev.UserTurnText():
                self.turns += 1
                self.user_turn_open = False
                self.speaking = False
            case ev.BotThinking():
                self.reply_active = True
                self.interrupting = False
            case ev.BotToken():
                self.reply_active = True
            case ev.BotTurnText():
                self.reply_active = False
            case ev.ProvidersChanged(stt=stt, llm=llm, tts=tts):
                self.stack = (stt, llm, tts)
            case ev.UserStoppedSpeaking() | ev.SessionStarted():
                self.speaking = False
            case ev.ErrorReported(fatal=True):
                self.speaking = False
            case ev.SessionEnded():
                self.barge_in_at = None
                self.speaking = False
