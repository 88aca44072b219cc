"""The one seam between our code and the libraries' internals.

Every private name, subclass hook and patch of a third-party library we rely on
lives in the module of its library here, listed in that module's ``CONTRACT``
with why we need it and what would retire it. ``tests/test_compat_seam.py``
fails on a private name used anywhere else; ``tests/test_compat_contract.py``
checks each entry against the installed versions (run it after moving a pin);
``docs/compat.md`` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reliance:
    """One thing of a library's internals we rely on.

    ``owner`` is the dotted path of the module or class that has ``name``;
    ``params`` (for a callable) the parameter names it must accept, in order;
    ``on_instance`` says the name is set in ``__init__`` (checked on an instance
    built by the contract test, not on the class).
    """

    library: str
    owner: str
    name: str
    why: str
    retire: str
    params: tuple[str, ...] | None = None
    on_instance: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.owner}.{self.name}"


def contract() -> list[Reliance]:
    """Every module's ``CONTRACT``, in one list (library order)."""
    from pipeline.compat import aiortc, asyncio_loop, fastrtc, gradio, pipecat

    return [
        *pipecat.CONTRACT,
        *fastrtc.CONTRACT,
        *aiortc.CONTRACT,
        *gradio.CONTRACT,
        *asyncio_loop.CONTRACT,
    ]
