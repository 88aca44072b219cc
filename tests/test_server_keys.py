"""The time budget on the server's own API keys, with a scripted clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.registry import choice_for
from pipeline.server_keys import ServerKeyBudget

SERVER_KEY = "gsk_the_servers_own_key_0123456789"
VISITOR_KEY = "gsk_a_visitors_own_key_9876543210"


@pytest.fixture(autouse=True)
def _server_key(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", SERVER_KEY)


def on_groq(key: str) -> SessionConfig:
    return SessionConfig(
        keys=ProviderKeys({"groq": key}),
        stt=choice_for("groq", "stt"),
        llm=choice_for("groq", "llm"),
        tts=choice_for("local", "tts"),
    )


def budget(secs: float, events: list) -> ServerKeyBudget:
    """One second passes between any two readings of the clock."""
    ticks = itertools.count()
    return ServerKeyBudget(events.append, secs, tick_secs=0, clock=lambda: float(next(ticks)))


async def test_the_budget_counts_down_then_the_server_key_stages_go_local():
    events, requested = [], []
    meter = budget(3, events)
    running = on_groq(SERVER_KEY)
    await asyncio.wait_for(meter.meter(lambda: running, requested.append), 1)

    shown = [e for e in events if e.kind == "ServerKeyTime"]
    assert [(e.remaining, e.limit) for e in shown] == [(2, 3), (1, 3), (0, 3)]
    assert meter.spent and events[-1].kind == "ErrorReported"
    assert events[-1].message.startswith("Your 3 s on this server's Groq key are used up")
    assert "STT, LLM now run on the local models" in events[-1].message
    (local,) = requested
    assert (local.stt.provider, local.llm.provider) == ("local", "local")


async def test_time_counts_only_while_a_generation_runs_on_the_servers_key():
    events: list = []
    meter = budget(3, events)
    for running in (None, on_groq(VISITOR_KEY)):
        task = asyncio.create_task(meter.meter(lambda r=running: r, events.append))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert meter.used == 0 and events == []


async def test_no_budget_means_no_limit():
    events: list = []
    meter = budget(0, events)
    await asyncio.wait_for(meter.meter(lambda: on_groq(SERVER_KEY), events.append), 1)
    config = on_groq(SERVER_KEY)
    assert meter.limit(config) is config and not meter.spent and events == []


async def test_once_spent_picking_the_servers_key_again_stays_local_and_says_why():
    events: list = []
    meter = budget(1, events)
    await meter.meter(lambda: on_groq(SERVER_KEY), lambda _config: None)
    events.clear()

    limited = meter.limit(on_groq(SERVER_KEY))
    assert (limited.stt.provider, limited.llm.provider) == ("local", "local")
    assert [e.kind for e in events] == ["ErrorReported"] and "used up" in events[0].message
    own = on_groq(VISITOR_KEY)
    assert meter.limit(own) is own, "a visitor's own key was limited"
    assert len(events) == 1


async def test_time_spent_outside_the_call_counts_and_can_send_the_call_local():
    """An A/B run on the server's keys is charged; spending the budget sends the call local."""
    events, requested = [], []
    meter = budget(10, events)
    meter.charge(4.0)
    assert [(e.kind, e.remaining) for e in events] == [("ServerKeyTime", 6.0)]
    meter.charge(7.0)
    assert meter.spent
    await asyncio.wait_for(meter.meter(lambda: on_groq(SERVER_KEY), requested.append), 1)
    (local,) = requested
    assert (local.stt.provider, local.llm.provider) == ("local", "local")
    assert events[-1].kind == "ErrorReported" and "used up" in events[-1].message
