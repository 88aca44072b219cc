"""How ``python -m bench`` runs: to the end, or until a signal, and in both cases tidily.

``asyncio.run`` already turns Ctrl-C (SIGINT) into a cancellation of the main
task, so every ``async with`` unwinds: the app under test is stopped, the
provider fakes close their ports. SIGTERM (what ``timeout``, CI runners and
``kill`` send) and SIGHUP (a closed terminal) would instead end the process on
the spot and leave ``python app.py`` running in its own session; here they end
the run the way Ctrl-C does.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

# Signals that end a run as Ctrl-C does (SIGINT is asyncio's own).
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """The run was ended by ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _until_signalled(main: Coroutine[Any, Any, int]) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            task.cancel()

    for signum in ENDING_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await main
    except asyncio.CancelledError:
        if received:
            raise Stopped(received[0]) from None
        raise
    finally:
        for signum in ENDING_SIGNALS:
            loop.remove_signal_handler(signum)


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` to its exit status; a signal ends it cleanly with 128 + the signal's number."""
    try:
        return asyncio.run(_until_signalled(main))
    except Stopped as stopped:
        return 128 + stopped.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
