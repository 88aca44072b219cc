"""Session export (a JSON file for bug reports) and replay of such a file into the dashboard.

The file holds the transcript, every event with its timestamp, and the
metrics; it never holds API keys, because events never carry them.

The app runs as a public Space, so a replayed file may come from anyone:
:func:`load_replay` bounds its size and event count before anything else,
checks every field of every event (``events.from_dict``), and folds in time
linear in the events. A bad file raises :class:`ReplayError`, whose message
is plain words that never quote the file. Exports are pruned as new ones are
written, so the export folder stays bounded on a long-running server.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path

from pipeline import events as ev
from ui.cost import conversation_minutes, session_cost, turn_cost
from ui.state import SessionState, initial_state, reduce
from ui.turnlog import false_interruptions

FORMAT = "voice-lab-session/1"
# A session keeps its last 5,000 events (``pipeline.session.EVENT_LOG_LIMIT``),
# so no export holds more; exporting that many takes ~0.7 MB. Parsing JSON holds
# the GIL throughout (~0.1 s a MB here), stalling every live session's event
# loop meanwhile, so the size limit leaves headroom but no more.
MAX_REPLAY_EVENTS = 5000
MAX_REPLAY_BYTES = 2_000_000
EXPORT_GLOB = "voice-lab-session-*.json"
TRACE_GLOB = "voice-lab-trace-*.json"


@dataclass(frozen=True)
class Retention:
    """How many exports (of a kind) the folder keeps, and for how long at most.

    The server's ``export_max_files`` and ``export_max_age_secs`` settings.
    """

    max_files: int = 200
    max_age_secs: float = 3600.0


class ReplayError(ValueError):
    """A file that cannot be replayed. The message is plain text, safe to show as it is."""

    def __init__(self, message: str) -> None:
        # Gradio shows error messages as HTML; ours never quote the file, and
        # are escaped all the same.
        super().__init__(escape(message, quote=False))


def export_session(events: list[ev.Event]) -> dict:
    # The state keeps only the most recent turns, so the transcript collects
    # each turn as the fold commits it.
    transcript = []
    final = initial_state()
    for event in events:
        folded = reduce(final, event)
        if folded.turn_count != final.turn_count:
            transcript.append(folded.turns[-1])
        final = folded
    return {
        "format": FORMAT,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "transcript": [asdict(turn) for turn in transcript],
        "metrics": {
            "voice_to_voice": [asdict(entry) for entry in final.latency],
            "ttfb": [asdict(point) for point in final.ttfb],
            "usage": asdict(final.usage),
            "interruptions": final.interruptions,
            "cost_usd": cost_summary(final),
            "output_health": health_summary(final),
        },
        "events": [event.to_dict() for event in events],
    }


def cost_summary(final: SessionState) -> dict:
    """The session's dollars, per minute, and per turn (the turns the state still holds)."""
    minutes = conversation_minutes(final)
    total = session_cost(final)
    return {
        "session": total,
        "per_minute": total / minutes if minutes else None,
        "per_turn": [
            {"turn": log.number, "usd": turn_cost(final, log.number), "stack": list(log.stack)}
            for log in final.turn_logs.turns
        ],
    }


def health_summary(final: SessionState) -> dict:
    """Underruns and false interruptions over the whole session."""
    logs = final.turn_logs
    return {
        "output_gaps": logs.gaps,
        "output_gap_secs": logs.gap_secs,
        "barge_ins": logs.barge_ins,
        "false_interruptions": false_interruptions(logs),
    }


def prune_exports(directory: Path, keep: int, max_age: float, pattern: str = EXPORT_GLOB) -> None:
    """Delete exports older than ``max_age`` seconds, then all but the ``keep`` newest."""
    now = time.time()
    found = []
    for path in directory.glob(pattern):
        try:
            found.append((path.stat().st_mtime, path))
        except FileNotFoundError:  # another visitor's export pruned it first
            continue
    found.sort(reverse=True)
    for rank, (mtime, path) in enumerate(found):
        if rank >= keep or now - mtime > max_age:
            path.unlink(missing_ok=True)


def write_export(
    events: list[ev.Event], directory: Path, retention: Retention = Retention()
) -> Path:
    data = export_session(events)
    return _write(directory, "voice-lab-session", EXPORT_GLOB, data, retention)


def write_trace(otlp: dict, directory: Path, retention: Retention = Retention()) -> Path:
    """The session's spans (OTLP/JSON, as ``pipeline.telemetry.tracing.otlp_json`` made them).

    Jaeger's UI opens such a file (Search > Upload), and any OTLP/HTTP receiver
    that takes JSON accepts it as the body of ``POST /v1/traces``.
    """
    return _write(directory, "voice-lab-trace", TRACE_GLOB, otlp, retention)


def _write(directory: Path, prefix: str, pattern: str, data: dict, retention: Retention) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    prune_exports(directory, retention.max_files - 1, retention.max_age_secs, pattern)
    # Unique per export: two visitors exporting in the same second must not share a file.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{prefix}-{stamp}-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def _megabytes(size: int) -> str:
    # Rounded up: a file just over the limit must not read as the limit itself.
    return f"{math.ceil(size / 100_000) / 10:.1f} MB"


def load_replay(path: str | Path | None) -> SessionState:
    """Read an uploaded session file and fold it into the state the dashboard showed."""
    if not isinstance(path, str | os.PathLike):
        raise ReplayError("No file arrived: pick a session file to replay.")
    path = Path(path)
    limit = f"a session file is at most {MAX_REPLAY_BYTES / 1e6:g} MB"
    try:
        size = path.stat().st_size
        if size > MAX_REPLAY_BYTES:
            raise ReplayError(f"That file is {_megabytes(size)}; {limit}.")
        with path.open("rb") as f:
            raw = f.read(MAX_REPLAY_BYTES + 1)
    except OSError:
        raise ReplayError("That file could not be read.") from None
    if len(raw) > MAX_REPLAY_BYTES:  # it grew after the size check
        raise ReplayError(f"That file is over {_megabytes(MAX_REPLAY_BYTES)}; {limit}.")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ReplayError("That file is not a session file: it is nested too deeply.") from None
    except ValueError:  # not JSON, not UTF-8, or an integer too long to read
        raise ReplayError("That file is not a session file: it is not valid JSON.") from None
    return replay(data)


def discard_upload(path: str | Path | None, upload_folder: Path) -> None:
    """Delete a replayed file from Gradio's upload cache: read once, it is not needed again.

    Only a file inside ``upload_folder`` is touched (with the folder Gradio made
    for it, once empty); anything else is left alone.
    """
    if not isinstance(path, str | os.PathLike):
        return
    try:
        file, folder = Path(path).resolve(), upload_folder.resolve()
        if not file.is_relative_to(folder) or file == folder:
            return
        file.unlink(missing_ok=True)
        if file.parent != folder:
            file.parent.rmdir()
    except OSError:
        pass  # another upload of the same bytes shares the folder, or it is gone already


def replay(data: object) -> SessionState:
    """Fold an exported session's events back into the state the dashboard showed."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReplayError("That is not a Voice Lab session file (made by Export session).")
    items = data.get("events")
    if not isinstance(items, list):
        raise ReplayError("That session file has no list of events.")
    if len(items) > MAX_REPLAY_EVENTS:
        raise ReplayError(
            f"That file holds {len(items):,} events; "
            f"a session file holds at most {MAX_REPLAY_EVENTS:,}."
        )
    state = initial_state()
    for number, item in enumerate(items, 1):
        try:
            event = ev.from_dict(item)
        except ev.EventFormatError as e:
            raise ReplayError(f"Event {number} of that file is not valid: {e}.") from None
        state = reduce(state, event)
    return state
