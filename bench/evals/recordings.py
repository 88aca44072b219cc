"""The suite's recordings: each turn's ``audio:`` file, spoken by the embedded Piper voice.

A recording says its turn's ``user:`` text. An ellipsis in the text is a
pause mid-thought (:data:`PAUSE_SECS` of silence), as in "What is the
capital... of Japan?": the recording carries its own pauses, since pipecat
plays a file as it is. Files are 16 kHz mono 16-bit WAV: what the pipeline
hears, sent sample for sample (small: ~32 KB a second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pipecat.evals.script import EvalScriptScenario

from bench.evals.run import load_folder

PAUSE_SECS = 1.5
PAUSE_MARK = "..."


def spoken(text: str) -> np.ndarray:
    """``text`` in the Piper voice at 16 kHz, each ``...`` a pause."""
    from testkit.speech import silence, speech_pcm

    parts: list[np.ndarray] = []
    for i, piece in enumerate(p.strip() for p in text.split(PAUSE_MARK)):
        if i:
            parts.append(silence(PAUSE_SECS))
        if piece:
            parts.append(speech_pcm(piece))
    return np.concatenate(parts)


def make_missing(folder: Path) -> list[Path]:
    """Write every recording the folder's scenarios name and that does not exist yet."""
    from testkit.speech import write_wav

    made = []
    for item in load_folder(folder):
        if not isinstance(item.scenario, EvalScriptScenario):
            continue
        for turn in item.scenario.turns:
            if turn.audio and turn.user and not Path(turn.audio).exists():
                path = Path(turn.audio)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_wav(path, spoken(turn.user))
                made.append(path)
    return made
