"""An asyncio event loop on a thread of its own, where the provider fakes serve.

The fakes' work (JSON, base64, TLS, latency timers) must not queue on the loop
that paces a session's microphone or timestamps what a client hears, and sync
tests (the browser tests drive Chromium synchronously) have no loop to lend.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F")


class ThreadLoop:
    """An event loop running on a daemon thread until :meth:`close`."""

    def __init__(self, name: str = "provider-fakes") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on this loop and wait for it (from code that is not async)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and await it from another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> ThreadLoop:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def serving(self, fake: F) -> Iterator[F]:
        """``fake`` started on this loop for the block (from code that is not async)."""
        self.call(fake.start())
        try:
            yield fake
        finally:
            self.call(fake.stop())

    @contextlib.asynccontextmanager
    async def serving_async(self, fake: F) -> AsyncIterator[F]:
        """``fake`` started on this loop for the block (from async code on another loop)."""
        await self.run(fake.start())
        try:
            yield fake
        finally:
            await self.run(fake.stop())


@contextlib.contextmanager
def serving_in_thread(fake: F) -> Iterator[F]:
    """``fake`` serving on a loop and thread of its own for the block."""
    with ThreadLoop() as loop, loop.serving(fake):
        yield fake
