"""How ``python -m bench`` runs: to the end, or until a signal, and in both cases tidily.

A signal (SIGINT from Ctrl-C, SIGTERM from ``timeout``, CI runners and ``kill``,
SIGHUP from a closed terminal) cancels the run's main task, so every
``async with`` unwinds: the app under test is stopped, the provider fakes close
their ports. Without this, SIGTERM and SIGHUP would end the process on the spot
and leave ``python app.py`` running in its own session. SIGINT is taken over from
``asyncio.run``'s own handler (which cancels from inside whatever code the signal
interrupted) so that all three are handled alike, as callbacks of the loop.

A cancellation can be lost (a library that catches it, or one that races with
what was being awaited), and the run would then go on to its last turn. So a
run still going :data:`RECANCEL_SECS` after the signal is cancelled again, and
again, each time logging where it was.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any

ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Longer than a tidy stop takes (stopping the app under test: a few seconds).
RECANCEL_SECS = 10.0


class Stopped(Exception):
    """The run was ended by ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


async def _until_signalled(main: Coroutine[Any, Any, int]) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def cancel_until_done(again: bool = False) -> None:
        if task.done():
            return
        if again:
            print(
                f"still running {RECANCEL_SECS:g} s after the signal: cancelling again; it was at:",
                file=sys.stderr,
            )
            task.print_stack(file=sys.stderr)
        task.cancel()
        loop.call_later(RECANCEL_SECS, cancel_until_done, True)

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            cancel_until_done()

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
    except KeyboardInterrupt:  # Ctrl-C before the run's loop was listening for it
        return 128 + signal.SIGINT
