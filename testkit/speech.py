"""Test speech made with Piper: Smart Turn misjudges robotic espeak-ng speech."""

from __future__ import annotations

import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.providers.local.models import shared_models

SAMPLE_RATE = 16000


@lru_cache(maxsize=32)
def speech_pcm(text: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``text`` spoken by the local Piper voice, as int16 mono at ``sample_rate``."""
    import soxr

    voice = shared_models().piper
    audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text)])
    audio = soxr.resample(audio, voice.config.sample_rate, sample_rate)
    return (np.clip(audio, -1, 1) * 32767 * 0.8).astype(np.int16)


def silence(seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.zeros(int(seconds * sample_rate), dtype=np.int16)


def noise(seconds: float, level: float = 0.02, sample_rate: int = SAMPLE_RATE, seed: int = 1):
    """Steady background hiss: should never count as speech."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, level, int(seconds * sample_rate)) * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(samples.astype(np.int16).tobytes())
    return path
