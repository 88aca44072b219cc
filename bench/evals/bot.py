"""Voice Lab's pipeline behind pipecat's eval transport, as a bot the eval harness can call.

The harness (``pipecat.evals``) talks to a bot over a WebSocket as an RTVI
client. This serves the *same* pipeline a visitor talks to, built by
:func:`pipeline.builder.build_generation` for a stack's :class:`SessionConfig`
(Silero VAD, Smart Turn, speculation, tools, the stack's providers), with
pipecat's own eval transport in place of the fastrtc one: one route, ``/ws``,
handed to pipecat's runner helper ``create_transport``, which reads the
harness's ``eval-connect`` message and builds ``EvalFastAPIWebsocketTransport``
(the dev runner's ``/ws`` route does the same).

Each connection is one conversation (:class:`Conversation`): what the
pipeline reported (the session events the page would draw: voice-to-voice per
turn, usage, tool calls, the bot's words), with the wall-clock time of each,
so the harness's turns can be matched to them afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, WebSocket
from pipecat.evals.serializer import EvalSerializer
from pipecat.evals.transport import EvalTransportParams
from pipecat.runner.types import WebSocketRunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.workers.runner import WorkerRunner

from pipeline import events as ev
from pipeline.builder import build_generation, transport_params
from pipeline.config import SessionConfig
from pipeline.providers.local.models import LocalModels
from pipeline.transport import SessionOutbox
from testkit.app import free_port

log = logging.getLogger("bench.evals")

SERVER_START_TIMEOUT_SECS = 10.0


@dataclass
class Conversation:
    """One harness connection, as the bot saw it: the session events, in order."""

    config: SessionConfig
    started_at: float = field(default_factory=time.time)
    events: list[ev.Event] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None

    def of(self, kind: type[ev.Event], since: float = 0.0, until: float = float("inf")) -> list:
        return [e for e in self.events if isinstance(e, kind) and since <= e.t < until]


class EvalBot:
    """An HTTP server on 127.0.0.1 whose ``/ws`` runs one pipeline per eval connection.

    ``config`` makes each conversation's settings (a stack). Use as
    ``async with EvalBot(config, models) as bot:``; ``bot.url`` is what the
    harness connects to, ``bot.conversations`` what each connection reported.
    """

    def __init__(self, config: Callable[[], SessionConfig], models: LocalModels):
        self._config = config
        self._models = models
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.conversations: list[Conversation] = []
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.websocket("/ws")
        async def converse(websocket: WebSocket):
            await websocket.accept()
            await self._converse(websocket)

        return app

    async def __aenter__(self) -> EvalBot:
        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="eval-bot-server")
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECS
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError(f"the eval bot did not start listening on port {self.port}")
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            # gather, not a suppressed CancelledError: a cancellation of this run keeps going.
            await asyncio.gather(self._task, return_exceptions=True)

    async def _converse(self, websocket: WebSocket) -> None:
        config = self._config()
        conversation = Conversation(config)
        self.conversations.append(conversation)

        def eval_params() -> EvalTransportParams:
            return EvalTransportParams(
                **transport_params(config).model_dump(), serializer=EvalSerializer()
            )

        try:
            transport = await create_transport(
                WebSocketRunnerArguments(websocket=websocket), {"eval": eval_params}
            )
            # Built off the event loop, as the app builds a session's (ONNX sessions load).
            generation = await asyncio.to_thread(
                build_generation,
                config,
                self._models,
                SessionOutbox(),
                conversation.events.append,
                transport=transport,
                rtvi=True,
            )
            runner = WorkerRunner(handle_sigint=False)

            @transport.event_handler("on_client_disconnected")
            async def _left(_transport, _websocket):
                await runner.cancel(reason="the harness disconnected")

            await runner.add_workers(generation.worker)
            await runner.run()
        except Exception as e:
            log.exception("the eval conversation failed")
            conversation.error = f"{type(e).__name__}: {e}"
        finally:
            conversation.ended.set()
