"""The arithmetic of the benchmark: summaries, audio gaps, barge-in stop time, process resources.

Kept apart from the scenarios so each rule (what counts as an underrun, when
the bot "stopped") is written down once and can be read on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ui.state import percentile

# A chunk later than this past the audio already delivered counts as an underrun.
UNDERRUN_TOLERANCE_SECS = 0.03
# A WebRTC listener starts playing a reply this long after its first audible frame.
PLAYOUT_BUFFER_SECS = 0.06
# The 20 ms frames a WebRTC client decodes.
WEBRTC_FRAME_SECS = 0.02
# A reply chunk followed by this much quiet ended the reply (as in the barge-in test).
STOP_GAP_SECS = 0.3
# Peak-to-peak below this is the padding silence, not speech.
AUDIBLE_THRESHOLD = 300


def summarize(values: list[float]) -> dict[str, float | int | None]:
    """median, p95, max and count of a list of seconds (None when empty)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "p95": None, "max": None, "n": 0}
    return {
        "median": statistics.median(values),
        "p95": percentile(values, 95),
        "max": max(values),
        "n": len(values),
    }


def microseconds(values: list[float]) -> dict:
    figures = summarize(values)
    return {k: (v * 1e6 if isinstance(v, float) else v) for k, v in figures.items()}


Chunk = tuple[float, int, np.ndarray]  # (time.monotonic() on arrival, sample rate, samples)


@dataclass
class Underruns:
    count: int = 0
    gap_seconds: float = 0.0

    def add(self, other: Underruns) -> None:
        self.count += other.count
        self.gap_seconds += other.gap_seconds


def underruns(chunks: list[Chunk], tolerance: float = UNDERRUN_TOLERANCE_SECS) -> Underruns:
    """Gaps in one reply's paced audio, as a client playing it back with no buffer would hear.

    The first chunk starts playback; each later chunk should arrive before the
    audio delivered so far has played out. One arriving more than
    ``tolerance`` after that point left the listener in silence mid-reply.
    """
    found = Underruns()
    covered_until: float | None = None
    for arrived, rate, samples in chunks:
        duration = len(samples) / rate
        if covered_until is not None and arrived > covered_until + tolerance:
            found.count += 1
            found.gap_seconds += arrived - covered_until
        covered_until = max(covered_until or arrived, arrived) + duration
    return found


def playout_underruns(arrivals: list[float], buffer_secs: float = PLAYOUT_BUFFER_SECS) -> Underruns:
    """Stalls of a WebRTC listener playing a reply's 20 ms frames (``arrivals``) in order.

    Playback starts ``buffer_secs`` after the first frame arrives and each frame
    plays for 20 ms; a frame arriving after its slot stalls playback by its
    lateness (``gap_seconds`` is the total stall).
    """
    found = Underruns()
    if not arrivals:
        return found
    play_at = arrivals[0] + buffer_secs
    for arrival in arrivals:
        if arrival > play_at:
            found.count += 1
            found.gap_seconds += arrival - play_at
            play_at = arrival
        play_at += WEBRTC_FRAME_SECS
    return found


def is_audible(samples: np.ndarray) -> bool:
    return bool(np.abs(samples).max(initial=0) > AUDIBLE_THRESHOLD)


def audio_stop_time(chunks: list[Chunk], since: float, gap: float = STOP_GAP_SECS) -> float | None:
    """When the reply audio playing at ``since`` ended: the end of its last audible chunk.

    Walks the audible chunks after ``since`` until one is followed by more
    than ``gap`` of quiet (the answer to the interruption may come later).
    None if no audible chunk arrived after ``since`` (it had already stopped).
    """
    stopped: float | None = None
    for arrived, rate, samples in chunks:
        if arrived < since or not is_audible(samples):
            continue
        if stopped is not None and arrived - stopped > gap:
            break
        stopped = arrived + len(samples) / rate
    return stopped


def speech_onset(samples: np.ndarray, sample_rate: int) -> float:
    """Seconds into ``samples`` where the voice starts (Piper leaves a little silence first)."""
    loud = np.flatnonzero(np.abs(samples) > AUDIBLE_THRESHOLD)
    return float(loud[0]) / sample_rate if len(loud) else 0.0


def speech_tail(samples: np.ndarray, sample_rate: int) -> float:
    """Seconds of quiet after the voice ends in ``samples`` (Piper's trailing silence)."""
    loud = np.flatnonzero(np.abs(samples) > AUDIBLE_THRESHOLD)
    return float(len(samples) - 1 - loud[-1]) / sample_rate if len(loud) else 0.0


# -- process resources -------------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds of this process, or of ``pid`` (from /proc; None if gone)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(native_id: int) -> float | None:
    """User + system CPU seconds of one thread of this process (Linux ``/proc``; None if gone)."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    """Resident set size now (Linux ``/proc``; the lifetime peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lifetime_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.asynccontextmanager
async def rss_sampler(every: float = 0.1):
    """Sample RSS while the block runs; yields a dict whose ``peak_mb`` is filled in.

    ``ru_maxrss`` is the peak of the whole process life, so it cannot tell
    one sweep level from the next: sampling can.
    """
    found = {"baseline_mb": rss_mb(), "peak_mb": rss_mb()}

    async def sample():
        while True:
            found["peak_mb"] = max(found["peak_mb"], rss_mb())
            await asyncio.sleep(every)

    task = asyncio.create_task(sample(), name="bench-rss-sampler")
    try:
        yield found
    finally:
        task.cancel()
        # gather, not a suppressed CancelledError: a cancellation of this run keeps going.
        await asyncio.gather(task, return_exceptions=True)
        found["peak_mb"] = max(found["peak_mb"], rss_mb())


# -- mouth to ear (WebRTC) ---------------------------------------------------------------

# Where a WebRTC turn's mouth-to-ear time goes, in order; they add up to it.
EAR_PARTS = (
    "uplink and voice detection",  # voice end -> the silence onset the server's V2V starts at
    "server v2v",  # pipecat's voice-to-voice: that onset -> first reply audio to fastrtc
    "to the first packet",  # fastrtc's queue and pacing, Opus encoding, the network
    "client jitter buffer",  # the reply's first packet -> its first frame decoded (aiortc: 4)
    "quiet start of the reply",  # its first frames below audible (the TTS's lead-in)
)


def server_replies(events: list[dict]) -> list[tuple[float, float]]:
    """(bot started speaking, voice-to-voice seconds) per measured turn of an exported session.

    ``LatencyMeasured`` is reported when the reply's first audio goes out, so
    it belongs to the ``BotStartedSpeaking`` just before it.
    """
    started: float | None = None
    found = []
    for event in events:
        if event.get("kind") == "BotStartedSpeaking":
            started = event["t"]
        elif event.get("kind") == "LatencyMeasured" and started is not None:
            found.append((started, event["seconds"]))
    return found


def mouth_to_ear_parts(turn: dict, replies: list[tuple[float, float]]) -> dict | None:
    """One WebRTC turn split into :data:`EAR_PARTS`, or None without the server's figure for it.

    ``turn`` holds the client's times on the server's clock (``*_wall``, see
    ``testkit.webrtc_client.WebRTCClient.turn``); the server's reply to it is the
    one whose first audio went out between the end of the voice and the first
    audible frame. Returns the server's V2V, what the listener waited beyond it,
    and the parts.
    """
    end, heard = turn.get("speech_end_wall"), turn.get("first_audible_wall")
    if end is None or heard is None:
        return None
    matching = [(started, v2v) for started, v2v in replies if end < started <= heard]
    if not matching:
        return None
    started, v2v = matching[-1]
    parts = {"uplink and voice detection": started - v2v - end, "server v2v": v2v}
    packet, frame = turn.get("reply_first_packet_wall"), turn.get("reply_first_frame_wall")
    if packet is not None and frame is not None:
        parts["to the first packet"] = packet - started
        parts["client jitter buffer"] = frame - packet
        parts["quiet start of the reply"] = heard - frame
    return {"server_v2v": v2v, "heard_minus_server": heard - end - v2v, "parts": parts}
