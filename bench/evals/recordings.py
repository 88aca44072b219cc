"""The suite's recordings: each turn's ``audio:`` file, spoken by the embedded Piper voice.

A recording says its turn's ``user:`` text. An ellipsis in the text is a
pause mid-thought (:data:`PAUSE_SECS` of silence), as in "What is the
capital of... Japan?": the recording carries its own pauses, since pipecat
plays a file as it is. The sentence is spoken whole and the silence cut into
it between two words: a speaker who pauses mid-sentence keeps its melody,
where "What is the capital of" spoken alone ends like a finished sentence
(and Smart Turn rightly hears it so). Files are 16 kHz mono 16-bit WAV: what
the pipeline hears, sent sample for sample (small: ~32 KB a second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pipecat.evals.script import EvalScriptScenario

from bench.evals.run import load_folder

PAUSE_SECS = 1.5
PAUSE_MARK = "..."


FRAME = 320  # 20 ms at 16 kHz
AUDIBLE = 300


def _spoken_length(samples: np.ndarray) -> int:
    """Samples up to the end of the last audible 20 ms frame."""
    loud = np.flatnonzero(np.abs(samples) > AUDIBLE)
    return int(loud[-1]) + 1 if len(loud) else len(samples)


def _gap_near(samples: np.ndarray, estimate: int) -> int:
    """The middle of the quietest 20 ms from 250 ms before ``estimate`` to 100 ms after it."""
    start = max(0, estimate - 250 * 16)
    end = min(len(samples) - FRAME, estimate + 100 * 16)
    energy = [
        float(np.mean(samples[i : i + FRAME].astype(np.float64) ** 2))
        for i in range(start, max(start + 1, end), FRAME // 4)
    ]
    return start + int(np.argmin(energy)) * (FRAME // 4) + FRAME // 2


def spoken(text: str) -> np.ndarray:
    """``text`` in the Piper voice at 16 kHz, each ``...`` a pause between two of its words."""
    from testkit.speech import silence, speech_pcm

    pieces = [p.strip() for p in text.split(PAUSE_MARK)]
    whole = speech_pcm(" ".join(p for p in pieces if p))
    cuts = []
    for i in range(1, len(pieces)):
        before = " ".join(p for p in pieces[:i] if p)
        cuts.append(_gap_near(whole, _spoken_length(speech_pcm(before))))
    parts, last = [], 0
    for cut in cuts:
        parts += [whole[last:cut], silence(PAUSE_SECS)]
        last = cut
    return np.concatenate([*parts, whole[last:]])


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
