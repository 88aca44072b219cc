"""The time budget on the server's own API keys, with a scripted clock."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.registry import choice_for
from pipeline.server_keys import ServerKeyBudget, ServerKeyLedger

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


def test_the_time_is_the_visitors_across_connections_pages_and_addresses():
    """A reconnect, a reload (new page) or a new address: each starts where the visitor left off."""
    ledger = ServerKeyLedger(window_secs=3600)
    first = ServerKeyBudget(lambda _e: None, 5, ledger=ledger)
    first.bill_to(("client:203.0.113.9", "session:page-1"))
    first.charge(5)
    assert first.spent
    for visitor in (
        ("client:203.0.113.9", "session:page-1"),  # reconnected
        ("client:203.0.113.9", "session:page-2"),  # reloaded the page
        ("client:198.51.100.4", "session:page-1"),  # the same page from another network
    ):
        again = ServerKeyBudget(lambda _e: None, 5, ledger=ledger)
        again.bill_to(visitor)
        assert again.spent and again.remaining == 0, visitor
    stranger = ServerKeyBudget(lambda _e: None, 5, ledger=ledger)
    stranger.bill_to(("client:192.0.2.1", "session:page-3"))
    assert not stranger.spent and stranger.remaining == 5
    unnamed = ServerKeyBudget(lambda _e: None, 5, ledger=ledger)
    assert unnamed.used == 0, "a connection nobody named counts on its own"


def test_the_time_starts_afresh_once_the_window_has_passed():
    now = [0.0]
    ledger = ServerKeyLedger(window_secs=60, clock=lambda: now[0])
    ledger.charge(("client:a",), 30)
    now[0] = 59.0
    assert ledger.used(("client:a",)) == 30
    now[0] = 60.0
    assert ledger.used(("client:a",)) == 0
    ledger.charge(("client:a",), 1)
    assert ledger.used(("client:a",)) == 1


def test_the_ledger_forgets_the_least_recent_visitors_beyond_its_bound():
    ledger = ServerKeyLedger(window_secs=3600, max_accounts=2)
    for account in ("a", "b", "c"):
        ledger.charge((account,), 10)
    assert [ledger.used((a,)) for a in ("a", "b", "c")] == [0, 10, 10]
