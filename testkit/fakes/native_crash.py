"""A stand-in ``xllamacpp`` that crashes in native code, as a build for another CPU does.

A llama.cpp compiled for AVX-512/AMX dies with SIGSEGV or SIGILL on a CPU
without them, inside its first decode; nothing in Python can catch that. This
package, put first on ``PYTHONPATH``, dereferences a null pointer through
ctypes when the model is loaded: a real segmentation fault, in native code.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = '''
import ctypes


def get_system_info():
    return "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 |"


class CommonParams:
    """Accepts any nested setting, like the real parameter object."""

    def __getattr__(self, name):
        value = CommonParams()
        object.__setattr__(self, name, value)
        return value


class Server:
    def __init__(self, params):
        ctypes.string_at(0)  # SIGSEGV
'''


def crashing_llm_runtime(directory: Path) -> Path:
    """Write the package under ``directory``; returns the folder to put on PYTHONPATH."""
    package = directory / "xllamacpp"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(_PACKAGE)
    return directory
