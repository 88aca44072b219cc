"""The state publisher: events folded by the UI's reducer, handed to fastrtc coalesced."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from pipeline import events as ev
from pipeline.publisher import StatePublisher


def fold(state: tuple[str, ...], event: ev.Event) -> tuple[str, ...]:
    return (*state, event.text)


class Outbox:
    """What fastrtc's ``emit()`` would be handed: (when, previous state, new state) per update."""

    def __init__(self):
        self.updates: list[tuple[float, object, object]] = []

    def put(self, item) -> None:
        self.updates.append((time.monotonic(), *item.args))


def token(text: str, t: float | None = None) -> ev.BotToken:
    return ev.BotToken(time.time() if t is None else t, text)


async def until(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_burst_of_events_is_one_update_carrying_the_previous_state():
    outbox = Outbox()
    publisher = StatePublisher(fold, tuple, outbox, interval=0.3)
    publisher.start()
    try:
        publisher.add(token("Hello"))
        await until(lambda: len(outbox.updates) == 1)  # the first one goes out at once
        for word in (",", " how", " are", " you"):
            publisher.add(token(word))
        await until(lambda: len(outbox.updates) == 2)
        await asyncio.sleep(0.4)
    finally:
        await publisher.stop()
    assert len(outbox.updates) == 2, "one update per token instead of one per burst"
    (_, before_1, after_1), (_, before_2, after_2) = outbox.updates
    assert (before_1, after_1) == (None, ("Hello",))
    assert before_2 == ("Hello",) and after_2 == ("Hello", ",", " how", " are", " you")
    assert publisher.state == after_2


async def test_updates_are_at_least_the_interval_apart_while_events_keep_coming():
    outbox = Outbox()
    interval = 0.1
    publisher = StatePublisher(fold, tuple, outbox, interval=interval)
    publisher.start()
    try:
        for i in range(50):  # one every 10 ms for half a second
            publisher.add(token(str(i)))
            await asyncio.sleep(0.01)
        await until(lambda: outbox.updates and len(outbox.updates[-1][2]) == 50)
    finally:
        await publisher.stop()
    times = [at for at, _, _ in outbox.updates]
    assert 2 <= len(times) <= 7, len(times)
    assert min(b - a for a, b in itertools.pairwise(times)) >= interval * 0.9
    # Nothing lost or reordered by the coalescing.
    assert outbox.updates[-1][2] == tuple(str(i) for i in range(50))


async def test_nothing_is_published_without_new_events_or_after_stopping():
    outbox = Outbox()
    publisher = StatePublisher(fold, tuple, outbox, interval=0.01)
    publisher.start()
    await asyncio.sleep(0.1)
    assert outbox.updates == []
    await publisher.stop()
    publisher.add(token("late"))
    await asyncio.sleep(0.1)
    assert outbox.updates == []


def test_a_snapshot_publishes_what_is_pending_at_once():
    outbox = Outbox()
    publisher = StatePublisher(fold, tuple, outbox, interval=60)
    publisher.add(token("a"))
    publisher.add(token("b"))
    assert publisher.snapshot() == ("a", "b")
    assert [(before, after) for _, before, after in outbox.updates] == [(None, ("a", "b"))]


def test_ui_delays_run_from_each_events_creation_to_its_hand_off():
    publisher = StatePublisher(fold, tuple, Outbox(), interval=60, clock=lambda: 100.0)
    publisher.add(token("a", t=99.5))
    publisher.add(token("b", t=99.9))
    publisher.publish()
    publisher.add(token("c", t=100.0))
    publisher.publish()
    assert list(publisher.ui_delays) == pytest.approx([0.5, 0.1, 0.0])
