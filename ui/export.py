"""Session export (a JSON file for bug reports) and replay of such a file into the dashboard.

The file holds the transcript, every event with its timestamp, and the
metrics; it never holds API keys, because events never carry them.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict
from functools import reduce as fold
from pathlib import Path

from pipeline import events as ev
from ui.state import SessionState, initial_state, reduce

FORMAT = "voice-lab-session/1"


def export_session(events: list[ev.Event]) -> dict:
    final = fold(reduce, events, initial_state())
    return {
        "format": FORMAT,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transcript": [asdict(turn) for turn in final.turns],
        "metrics": {
            "voice_to_voice": [asdict(entry) for entry in final.latency],
            "ttfb": [asdict(point) for point in final.ttfb],
            "usage": asdict(final.usage),
            "interruptions": final.interruptions,
        },
        "events": [event.to_dict() for event in events],
    }


def write_export(events: list[ev.Event], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # Unique per export: two visitors exporting in the same second must not share a file.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"voice-lab-session-{stamp}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(export_session(events), indent=1))
    return path


def replay(data: dict) -> SessionState:
    """Fold an exported session's events back into the state the dashboard showed."""
    if data.get("format") != FORMAT:
        raise ValueError("not a Voice Lab session file")
    events = [ev.from_dict(item) for item in data["events"]]
    return fold(reduce, events, initial_state())
