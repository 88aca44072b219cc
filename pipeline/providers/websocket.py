"""What any provider on a pipecat websocket service needs when its connection drops.

pipecat reconnects a dropped websocket silently, and the turn that was on it
is lost without a word; its later errors say only that verification failed.
:class:`ReportsDroppedConnection` says so mid-turn, keeps the reason the
server gave, and lets each service decide what else the lost turn needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a mixin: what it is mixed into, for the type checker only
    from pipecat.services.ai_service import AIService

    from pipeline.compat.pipecat import WebsocketHooks

    class _WebsocketAIService(WebsocketHooks, AIService): ...

else:
    _WebsocketAIService = object


class ReportsDroppedConnection(_WebsocketAIService):
    """Say so when the websocket drops mid-turn; pipecat reconnects silently, losing the turn.

    Also keeps the reason the server gave when it closed the socket ("1008
    Invalid API key"): pipecat's later reconnection errors say only that
    verification failed, and the reason is what tells a visitor what to fix.

    Mix it in before a :class:`pipeline.compat.pipecat.WebsocketHooks` subclass, and override
    :meth:`_mid_turn` (is a turn on this socket now?) and
    :meth:`_on_dropped_mid_turn` (what else to do about it).
    """

    _server_close_reason = ""

    def _mid_turn(self) -> bool:
        return True

    async def _on_dropped_mid_turn(self) -> None:
        """What else to do about the lost turn, besides saying so."""

    def _note_close(self, closed) -> None:
        if closed is not None and closed.code != 1000:
            self._server_close_reason = f"{closed.code} {closed.reason}".strip()

    async def verify_connection(self) -> bool:
        verified = await super().verify_connection()
        if not verified:
            self._note_close(getattr(self.websocket, "close_rcvd", None))
        return verified

    async def maybe_try_reconnect(self, error_message, report_error, error=None):
        self._note_close(getattr(error, "rcvd", None))
        if not self.disconnecting and self._mid_turn():
            await self.push_error(f"connection dropped: {error_message}", exception=error)
            await self._on_dropped_mid_turn()
        return await super().maybe_try_reconnect(error_message, report_error, error)

    async def push_error_frame(self, error, *args, **kwargs):
        reason = self._server_close_reason
        if reason and reason not in error.error:
            error.error = f"{error.error} (the server closed the connection: {reason})"
        await super().push_error_frame(error, *args, **kwargs)
