"""Try every native runtime in a short-lived child process before the server loads it.

A crash in native code (a llama.cpp built for another CPU, a broken wheel, an
instruction the host lacks) kills the process that runs it: no ``try`` catches
a SIGSEGV or SIGILL. So at start-up a child process loads each local model
and runs one tiny inference through it, stage by stage, printing a line per
result. The server then loads in-process only what survived, and the page
names what did not and why; the cloud providers work either way.

The child starts before the server imports Gradio and pipecat, so on two
cores the probe mostly overlaps work the server does anyway.

Run by hand: ``python -m pipeline.probe`` prints one JSON line per stage.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.weights import child_environment

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# "turn" is Silero VAD and Smart Turn (onnxruntime): every session needs it.
STAGES = ("turn", "stt", "llm", "tts")
PROBE_TIMEOUT_SECS = 90.0


# -- in the child -------------------------------------------------------------


def _check_turn() -> None:
    import numpy as np
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from pipecat.audio.vad.silero import SileroVADAnalyzer

    from pipeline.compat.pipecat import predict_endpoint

    vad = SileroVADAnalyzer(sample_rate=16000)
    vad.set_sample_rate(16000)  # without it voice_confidence logs an error and never runs the model
    vad.voice_confidence(np.zeros(vad.num_frames_required(), dtype=np.int16).tobytes())
    turn = LocalSmartTurnAnalyzerV3(sample_rate=16000)
    predict_endpoint(turn, np.zeros(16000, dtype=np.float32))


def _check_stt() -> None:
    import numpy as np

    from pipeline.providers.local.models import LocalModels

    LocalModels().transcribe(np.zeros(16000, dtype=np.int16).tobytes())


def _check_llm() -> None:
    from pipeline.providers.local.models import LocalModels, llm_runtime_cpu_features

    features = llm_runtime_cpu_features()
    if not features.get("AVX2", True) and features.get("AVX", False):
        raise RuntimeError("the llama.cpp build reports no AVX2")
    LocalModels(llm_threads=1, llm_batch_threads=1).llm.chat(
        [{"role": "user", "content": "Hi"}],
        max_tokens=1,
        temperature=0.0,
        on_text=lambda _text: False,
    )


def _check_tts() -> None:
    from pipeline.providers.local.models import LocalModels

    for _ in LocalModels().piper.synthesize("Ready."):
        pass


CHECKS: dict[str, Callable[[], None]] = {
    "turn": _check_turn,
    "stt": _check_stt,
    "llm": _check_llm,
    "tts": _check_tts,
}


def _say(**fields) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main(stages: list[str]) -> None:
    # Native libraries may log to stdout: keep it for our lines only.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = protocol
    for stage in stages:
        _say(stage=stage, started=True)
        start = time.perf_counter()
        try:
            CHECKS[stage]()
        except Exception as e:  # any failure makes the stage unavailable
            _say(stage=stage, ok=False, error=f"{type(e).__name__}: {e}"[:300])
        else:
            _say(stage=stage, ok=True, seconds=round(time.perf_counter() - start, 3))


# -- in the server --------------------------------------------------------------


class RuntimeProbe:
    """The child process and what it has reported so far."""

    def __init__(self, stages: tuple[str, ...] = STAGES, timeout: float = PROBE_TIMEOUT_SECS):
        self._deadline = time.monotonic() + timeout
        self._remaining = list(stages)
        self.results: dict[str, str | None] = {}  # stage -> None (works) or why not
        self.seconds: dict[str, float] = {}
        self._process: subprocess.Popen | None = None
        self._timed_out = False
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in wait()
        self._spawn()

    @classmethod
    def start(cls) -> RuntimeProbe:
        return cls()

    def _spawn(self) -> None:
        # A file, not a pipe, for stderr: nobody reads it until the child is
        # gone, and a full pipe would stall the child.
        self._stderr.seek(0)
        self._stderr.truncate()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.probe", *self._remaining],
            cwd=ROOT,
            # The same LLM weights as this process runs (maybe fetched from the hub).
            env={**os.environ, **child_environment(), "PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def wait(self) -> dict[str, str | None]:
        """Block until every stage has a verdict; returns stage -> None or the reason."""
        while self._remaining:
            current = self._read_until_exit()
            if not self._remaining:
                break
            # The child died (or hung) in the middle of ``current``: that stage is out,
            # and a new child carries on with the rest.
            stage = current or self._remaining[0]
            self.results[stage] = self._death_reason()
            log.warning(
                "local %s failed its start-up check: %s\n%s",
                stage,
                self.results[stage],
                self._stderr_tail(),
            )
            self._remaining.remove(stage)
            if self._remaining and time.monotonic() < self._deadline:
                self._spawn()
            else:
                for rest in self._remaining:
                    self.results[rest] = "its start-up check did not finish in time"
                self._remaining.clear()
        self._stderr.close()
        for stage, reason in self.results.items():
            if reason is not None:
                log.warning("local %s unavailable: %s", stage, reason)
        return self.results

    def _stderr_tail(self, chars: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-chars:]

    def _read_until_exit(self) -> str | None:
        """Collect the child's verdicts; returns the stage it was in when it stopped."""
        process = self._process
        assert process is not None and process.stdout is not None
        current = None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while True:
                left = self._deadline - time.monotonic()
                if left <= 0 or not selector.select(timeout=left):
                    process.kill()
                    process.wait()
                    self._timed_out = True
                    return current
                line = process.stdout.readline()
                if not line:
                    process.wait()
                    return current
                current = self._take(line, current)

    def _take(self, line: str, current: str | None) -> str | None:
        try:
            said = json.loads(line)
            stage = said["stage"]
        except (ValueError, KeyError, TypeError):
            return current  # not ours
        if said.get("started"):
            return stage
        if stage in self._remaining:
            self._remaining.remove(stage)
            self.results[stage] = None if said.get("ok") else said.get("error", "failed")
            if said.get("seconds") is not None:
                self.seconds[stage] = float(said["seconds"])
        return None

    def _death_reason(self) -> str:
        process = self._process
        assert process is not None
        if self._timed_out:
            return f"its start-up check hung for {PROBE_TIMEOUT_SECS:.0f}s"
        code = process.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"its native runtime crashed ({name}) on this machine"
        return f"its start-up check exited with status {code}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main([s for s in sys.argv[1:] if s in CHECKS] or list(STAGES))
