"""Offer the demo tools to an LLM through pipecat's function calling, and time every call.

:func:`attach` is the builder's one call: for an LLM whose provider declares it
calls tools (the registry's capability, never its name) and a session with tools
on, it registers a handler per tool (``register_function``), sets the context's
tools (``ToolsSchema``) and adds their instructions; otherwise it withdraws any
tools an earlier generation left in the context, so they are never offered to an
LLM that cannot call them.

Each handler (:class:`ToolRunner`) reports ``ToolCallStarted``/``ToolCallFinished``
events, says the tool's waiting phrase once a call takes longer than the
threshold, bounds the call by a timeout, and turns any failure into a spoken
apology for the LLM plus a readable message on the page: the bot is never silent.
Read-only tools are cancelled by a barge-in as usual; a tool that changes data is
registered with ``cancel_on_interruption=False`` (pipecat's asynchronous call): it
completes exactly once, its result lands in the context, and the interruption is
answered meanwhile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sqlite3
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import TTSSpeakFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.llm_service import FunctionCallParams, LLMService
from pipecat.utils.types import NOT_GIVEN

from pipeline import events as ev
from pipeline import redaction
from pipeline.providers.registry import capabilities
from pipeline.tools import catalog
from pipeline.tools.db import session_database

log = logging.getLogger(__name__)

# What an event may carry of a call's arguments or result.
MAX_EVENT_TEXT = 500
CANCELLED = "Cancelled: you spoke over it before it answered."
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class ToolSettings:
    """How tool calls behave: the server's ``VOICE_LAB_TOOL_*`` settings, via the session config."""

    # A call that has not answered after this long gets the tool's waiting phrase.
    wait_phrase_secs: float = 0.8
    # A call that has not answered after this long is abandoned with an apology.
    timeout_secs: float = 5.0
    # Simulated back-end time added to every call (the demo's database answers in
    # microseconds; this shows what a real order system's delay sounds like).
    latency_secs: float = 0.0

    @classmethod
    def of(cls, config) -> ToolSettings:
        """The tool settings of a :class:`pipeline.config.SessionConfig`."""
        return cls(
            wait_phrase_secs=config.tool_wait_phrase_secs,
            timeout_secs=config.tool_timeout_secs,
            latency_secs=config.tool_latency_secs,
        )


# A session's database lives as long as its conversation: the context is handed
# from one pipeline generation to the next (a provider switch), so keying on it
# keeps a cancelled order cancelled across switches, and frees it with the session.
_databases: weakref.WeakKeyDictionary[LLMContext, sqlite3.Connection] = weakref.WeakKeyDictionary()


def database_of(context: LLMContext) -> sqlite3.Connection:
    """The session's own copy of the demo data (made on first use)."""
    found = _databases.get(context)
    if found is None:
        found = _databases[context] = session_database()
    return found


def offered(config) -> bool:
    """Whether this session's LLM gets the tools: on for the session, and an LLM that calls them."""
    return bool(getattr(config, "tools", False)) and capabilities("llm", config.llm).tools


def attach(
    config,
    llm: LLMService,
    context: LLMContext,
    sink: Callable[[ev.Event], None],
    settings: ToolSettings | None = None,
) -> ToolRunner | None:
    """Offer the tools to ``llm`` if :func:`offered`, else take them out of ``context``."""
    if not offered(config):
        context.set_tools(NOT_GIVEN)
        return None
    runner = ToolRunner(
        database_of(context),
        sink,
        redact=lambda text: config.keys.redact(redaction.redact(text)),
        settings=settings or ToolSettings.of(config),
    )
    runner.install(llm, context)
    return runner


class NotAnObject(Exception):
    """The LLM's arguments for a call were valid JSON, but not an object."""


class ToolRunner:
    """Runs a session's tool calls for one LLM: events, waiting phrase, timeout, failures."""

    def __init__(
        self,
        db: sqlite3.Connection,
        sink: Callable[[ev.Event], None],
        *,
        redact: Callable[[str], str] = redaction.redact,
        settings: ToolSettings | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone(),
    ):
        self.db = db
        self._sink = sink
        self._redact = redact
        self.settings = settings or ToolSettings()
        self._now = clock
        # The waiting phrase is said once per batch of calls, however many are slow.
        self._phrase_said = False

    def install(self, llm: LLMService, context: LLMContext) -> None:
        for tool in catalog.TOOLS:
            llm.register_function(
                tool.name,
                self._handler(tool),
                # A barge-in must never stop a change half-way (nor undo one).
                cancel_on_interruption=not tool.changes_data,
            )
        context.set_tools(ToolsSchema(standard_tools=[tool.schema for tool in catalog.TOOLS]))
        llm.append_system_instruction(catalog.INSTRUCTIONS)

        @llm.event_handler("on_function_calls_started")
        async def _on_calls(_service, _calls):
            self._phrase_said = False

    def _handler(self, tool: catalog.Tool):
        async def handle(params: FunctionCallParams) -> None:
            fact = await self.call(tool, params)
            await params.result_callback(fact)

        return handle

    async def call(self, tool: catalog.Tool, params: FunctionCallParams) -> str:
        """Run one call; returns the fact for the LLM (an apology if it failed)."""
        call_id = params.tool_call_id
        # What the LLM wrote, unchecked: pipecat passes on any JSON (a list, a
        # string, a number) as the arguments, and a visitor can talk it into that.
        arguments = {} if params.arguments is None else params.arguments
        shown = json.dumps(arguments, ensure_ascii=False, default=str)
        self._sink(
            ev.ToolCallStarted(
                time.time(), call_id, tool.name, self._redact(shown)[:MAX_EVENT_TEXT]
            )
        )
        phrase = asyncio.create_task(self._say_while_waiting(params.llm, tool))
        ok = False
        try:
            if not isinstance(arguments, Mapping):
                raise NotAnObject(JSON_TYPES.get(type(arguments), type(arguments).__name__))
            fact = await asyncio.wait_for(
                self._run(tool, dict(arguments), call_id), self.settings.timeout_secs
            )
            ok = True
        except asyncio.CancelledError:
            self._finished(call_id, tool, False, CANCELLED)
            raise
        except catalog.ToolRefusal as e:
            fact = str(e)
        except NotAnObject as e:
            fact = tool.apology
            self._failed(tool, f"was given arguments that are not an object (a JSON {e})")
        except TimeoutError:
            fact = tool.apology
            self._failed(tool, f"did not answer within {self.settings.timeout_secs:g} s")
        except Exception as e:
            log.exception("tool %s failed", tool.name)
            fact = tool.apology
            self._failed(tool, f"failed ({type(e).__name__}: {e})")
        finally:
            phrase.cancel()
        self._finished(call_id, tool, ok, fact)
        return fact

    async def _run(self, tool: catalog.Tool, arguments: dict, call_id: str) -> str:
        if self.settings.latency_secs > 0:
            await asyncio.sleep(self.settings.latency_secs)
        # One synchronous transaction: nothing can interrupt it half-way.
        return tool.run(self.db, arguments, call_id, self._now())

    async def _say_while_waiting(self, llm: LLMService, tool: catalog.Tool) -> None:
        await asyncio.sleep(self.settings.wait_phrase_secs)
        if self._phrase_said:
            return
        self._phrase_said = True
        await llm.push_frame(TTSSpeakFrame(tool.waiting_phrase))

    def _finished(self, call_id: str, tool: catalog.Tool, ok: bool, result: str) -> None:
        self._sink(
            ev.ToolCallFinished(
                time.time(), call_id, tool.name, ok, self._redact(result)[:MAX_EVENT_TEXT]
            )
        )

    def _failed(self, tool: catalog.Tool, what: str) -> None:
        message = f"The {tool.name} tool {what}; the bot apologised."
        self._sink(ev.ErrorReported(time.time(), self._redact(message)[:MAX_EVENT_TEXT]))
