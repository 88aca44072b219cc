"""The lint, format and type checks, run by the README's test command like every other test.

Each runs the pinned tool from this virtualenv (requirements-dev.txt) on the
checkout, with the configuration in pyproject.toml, and fails showing what the
tool reported. mypy keeps its cache in ``.mypy_cache`` (git-ignored): a cold
run takes about 25 s here, a warm one a second or two.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL_TIMEOUT_SECS = 240


def run_tool(*args: str) -> None:
    command = [sys.executable, "-m", *args]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=TOOL_TIMEOUT_SECS
    )
    if done.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited with {done.returncode}:\n{done.stdout}{done.stderr}",
            pytrace=False,
        )


def test_ruff_finds_no_lint():
    run_tool("ruff", "check", ".")


def test_the_code_is_ruff_formatted():
    run_tool("ruff", "format", "--check", ".")


def test_mypy_finds_no_type_errors_in_pipeline_and_ui():
    run_tool("mypy", "pipeline", "ui")
