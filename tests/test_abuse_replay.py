"""Hostile session files uploaded to the running app over HTTP, as an attacker would.

``python app.py`` is started as a user starts it; every request goes through
Gradio's HTTP API exactly as the page's "Replay a session file" button sends it
(``POST /gradio_api/upload``, then the replay event joins the queue and its
result arrives on the queue's event stream), to 127.0.0.1 only. Each bad file
must get a plain message back, the server log must stay free of tracebacks,
and a visitor replaying a real export must be answered during the attack,
without waiting behind it, and after it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from pipeline import events as ev
from testkit.app import AppProcess
from tests.test_state import one_turn
from ui import export, views

pytestmark = pytest.mark.slow

HTML = '<img src=x onerror="alert(1)"><a href="https://evil.example">evil</a>'
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")
HEAVY_REPLAYS = 4


def session_document(events: list[ev.Event]) -> dict:
    return {"format": export.FORMAT, "events": [event.to_dict() for event in events]}


def attacks() -> dict[str, tuple[bytes, str]]:
    """name -> (file content, what the refusal must say)."""
    turns = [{"kind": "UserTurnText", "t": i, "text": "a"} for i in range(40_000)]
    ttfb = {"kind": "ServiceTTFB", "t": 1, "stage": "llm", "service": "x", "model": None}
    return {
        "oversized": (b" " * 4_500_000, "That file is 4.5 MB; a session file is at most 2 MB."),
        "40k turns": (
            json.dumps({"format": export.FORMAT, "events": turns}, separators=(",", ":")).encode(),
            "That file holds 40,000 events; a session file holds at most 5,000.",
        ),
        "a number as text": (
            json.dumps(
                {"format": export.FORMAT, "events": [{**ttfb, "seconds": "9" * 20_000}]}
            ).encode(),
            "Event 1 of that file is not valid: ServiceTTFB.seconds must be a number.",
        ),
        "deep nesting": (
            b"[" * 100_000 + b"]" * 100_000,
            "That file is not a session file: it is nested too deeply.",
        ),
        "HTML in kind": (
            json.dumps({"format": export.FORMAT, "events": [{"kind": HTML, "t": 1}]}).encode(),
            "Event 1 of that file is not valid: unknown event kind.",
        ),
        "unknown kind": (
            json.dumps({"format": export.FORMAT, "events": [{"kind": "Shell", "t": 1}]}).encode(),
            "Event 1 of that file is not valid: unknown event kind.",
        ),
        "a list": (b"[]", "That is not a Voice Lab session file (made by Export session)."),
    }


def heavy_file() -> bytes:
    """A valid file as costly to replay as the limits allow: the attack that does not fail."""
    pairs = tuple((f"part {j}", 0.01) for j in range(ev.MAX_ITEMS))
    events = [ev.LatencyMeasured(i, 0.5, pairs) for i in range(export.MAX_REPLAY_EVENTS)]
    return json.dumps(session_document(events)).encode()


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[AppProcess]:
    with AppProcess(tmp_path_factory.mktemp("abuse-replay") / "app.log") as server:
        yield server


class Page:
    """What the page does when a file is picked on the "Replay a session file" button."""

    def __init__(self, http: httpx.AsyncClient, config: dict) -> None:
        self.http = http
        button = next(
            c["id"]
            for c in config["components"]
            if c.get("type") == "uploadbutton"
            and c.get("props", {}).get("label") == "Replay a session file"
        )
        self.button = button
        self.fn_index = next(
            dep["id"] for dep in config["dependencies"] if [button, "upload"] in dep["targets"]
        )

    async def upload(self, content: bytes, name: str = "session.json") -> dict:
        response = await self.http.post(
            "gradio_api/upload", files={"files": (name, content, "application/json")}
        )
        response.raise_for_status()
        return {
            "path": response.json()[0],
            "orig_name": name,
            "size": len(content),
            "mime_type": "application/json",
            "meta": {"_type": "gradio.FileData"},
        }

    async def join(self, file: dict | None) -> asyncio.Task:
        """Queue the replay of an uploaded file; the task gives its :class:`Outcome`."""
        session_hash = secrets.token_hex(6)
        body = {
            "data": [file],
            "event_data": None,
            "fn_index": self.fn_index,
            "trigger_id": self.button,
            "session_hash": session_hash,
        }
        joined = time.monotonic()
        (await self.http.post("gradio_api/queue/join", json=body)).raise_for_status()
        return asyncio.create_task(self._outcome(session_hash, joined))

    async def _outcome(self, session_hash: str, joined: float) -> Outcome:
        started = None
        params = {"session_hash": session_hash}
        async with self.http.stream("GET", "gradio_api/queue/data", params=params) as stream:
            async for line in stream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_starts":
                    started = time.monotonic()
                if message.get("msg") == "process_completed":
                    return Outcome(message, joined, started or time.monotonic(), time.monotonic())
        raise AssertionError("the queue's event stream ended without a result")

    async def replay(self, content: bytes) -> Outcome:
        """Pick the file on the button and wait for the outcome."""
        return await (await self.join(await self.upload(content)))


@dataclass
class Outcome:
    """What the page got back, and when (monotonic): queued, started, answered."""

    result: dict
    joined: float
    started: float
    done: float

    @property
    def seconds(self) -> float:
        return self.done - self.joined


def assert_replayed(result: dict) -> None:
    assert result["success"], result
    names = [view.name for view in views.VIEWS]
    conversation = result["output"]["data"][names.index("conversation")]
    assert "Hello there" in conversation and "Hi! How can I help?" in conversation


def assert_plain_refusal(name: str, result: dict, expected: str) -> None:
    assert not result["success"], f"{name}: replayed"
    error = result["output"]["error"]
    assert error == expected, f"{name}: {error!r}"
    assert result["output"]["title"] == "Could not replay that file"
    assert "<" not in error and "evil" not in error
    assert not any(marker in error for marker in TRACEBACK_MARKERS)


async def test_hostile_session_files_get_plain_refusals_and_visitors_still_replay(app):
    visitor_file = json.dumps(export.export_session([ev.SessionStarted(0), *one_turn()])).encode()
    hostile = attacks()
    heavy = heavy_file()
    transport = httpx.AsyncHTTPTransport(retries=0)
    async with httpx.AsyncClient(
        base_url=app.url, trust_env=False, timeout=60, transport=transport
    ) as http:
        page = Page(http, (await http.get("config")).json())
        log_offset = app.log_size()

        # A visitor before the attack: what "promptly" means on this machine now.
        alone = await page.replay(visitor_file)
        assert_replayed(alone.result)

        # Every bad file twice over, all queued at once, then a visitor's real export.
        names = [*hostile, *hostile]
        contents = [hostile[name][0] for name in names]
        uploaded = await asyncio.gather(*(page.upload(c) for c in [*contents, visitor_file]))
        attack = await asyncio.gather(*(page.join(file) for file in uploaded[:-1]))
        visitor = await (await page.join(uploaded[-1]))
        for name, outcome in zip(names, await asyncio.gather(*attack), strict=True):
            assert_plain_refusal(name, outcome.result, hostile[name][1])
        assert_replayed(visitor.result)
        # The page's own request with no file in it (an API caller can send that).
        empty = await (await page.join(None))
        assert_plain_refusal(
            "no file", empty.result, "No file arrived: pick a session file to replay."
        )
        limit = max(5.0, 20 * alone.seconds)
        assert visitor.seconds < limit, f"visitor waited {visitor.seconds:.1f} s during the attack"

        # The costliest files the limits let through, then a visitor. The queue
        # once ran replays one at a time (and one file took 13 s): the visitor
        # must not wait for the heavy ones to end before its own starts, and is
        # answered as promptly as during the attacks above. (Replays are Python
        # threads sharing one GIL with the server's event loop, so a small one
        # ends at about the time four heavy ones, ~0.3 s each, do.)
        heavies = [heavy] * HEAVY_REPLAYS
        uploaded = await asyncio.gather(*(page.upload(c) for c in [*heavies, visitor_file]))
        attack = await asyncio.gather(*(page.join(file) for file in uploaded[:-1]))
        visitor = await (await page.join(uploaded[-1]))
        heavy_outcomes = await asyncio.gather(*attack)
        assert all(outcome.result["success"] for outcome in heavy_outcomes)
        assert_replayed(visitor.result)
        last_heavy_done = max(outcome.done for outcome in heavy_outcomes)
        assert visitor.started < last_heavy_done, (
            f"the visitor's replay started {visitor.started - last_heavy_done:.2f} s after "
            f"the heavy ones had all ended: it was queued behind them"
        )
        assert visitor.seconds < limit, f"visitor waited {visitor.seconds:.1f} s behind heavy files"

        # And after it.
        after = await page.replay(visitor_file)
        assert_replayed(after.result)
        limit = max(5.0, 10 * alone.seconds)
        assert after.seconds < limit, f"visitor waited {after.seconds:.1f} s after the attack"

    log = app.log_since(log_offset)
    assert not any(marker in log for marker in TRACEBACK_MARKERS), log[-3000:]
