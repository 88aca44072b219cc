"""The time one session may spend on the server's own API keys.

On a public Space the owner's keys serve every visitor who types none: without
a limit one visitor could talk on the owner's account for ever. The budget is
counted only while a generation runs on a server key; once it is spent, those
stages move to the local models, and picking them again without a key of
one's own stays local. A visitor's own key has no limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pipeline import events as ev
from pipeline.config import SessionConfig, server_key_budget_secs
from pipeline.providers.registry import PROVIDERS

# How often the time on the server's keys is counted and shown.
SERVER_KEY_TICK_SECS = 1.0


class ServerKeyBudget:
    """Counts one session's seconds on the server's keys and moves those stages local once spent."""

    def __init__(
        self,
        report: Callable[[ev.Event], None],
        budget_secs: float | None = None,
        tick_secs: float = SERVER_KEY_TICK_SECS,
        clock: Callable[[], float] = time.monotonic,
        on_spent: Callable[[list[str], float], None] | None = None,
    ):
        self._report = report
        # Told every tick which providers' server keys ran and for how long (the
        # metrics), with or without a budget.
        self._on_spent = on_spent
        # Seconds this session may spend on the server's own API keys (0: unlimited).
        self.budget = server_key_budget_secs() if budget_secs is None else budget_secs
        self.used = 0.0
        self._tick = tick_secs
        self._now = clock

    @property
    def spent(self) -> bool:
        return 0 < self.budget <= self.used

    def limit(self, config: SessionConfig) -> SessionConfig:
        """``config`` as it may run: once the budget is spent, its server-key stages go local."""
        if self.spent and (stages := config.server_key_stages()):
            self._report(ev.ErrorReported(time.time(), self._message(config, stages)))
            return config.with_local_for(stages)
        return config

    async def meter(
        self,
        running: Callable[[], SessionConfig | None],
        request: Callable[[SessionConfig], None],
    ) -> None:
        """Count the time spent on the server's keys; past the budget, ``request`` the local models.

        ``running`` is the configuration of the generation that runs now (None before one does).
        """
        if self.budget <= 0 and self._on_spent is None:
            return
        last = self._now()
        while True:
            await asyncio.sleep(self._tick)
            now = self._now()
            elapsed, last = now - last, now
            config = running()
            if config is None or not (stages := config.server_key_stages()):
                continue
            if self._on_spent is not None:
                providers = [PROVIDERS[config.choices()[stage].provider].label for stage in stages]
                self._on_spent(providers, elapsed)
            if self.budget <= 0:
                continue
            if not self.spent:  # an A/B run's charge may have spent it already
                self.charge(elapsed)
            if self.spent:
                self._report(ev.ErrorReported(time.time(), self._message(config, stages)))
                request(config.with_local_for(stages))
                return

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` on the server's keys: the call's, tick by tick, or an A/B run's."""
        if self.budget <= 0:
            return
        self.used += seconds
        remaining = max(0.0, self.budget - self.used)
        self._report(ev.ServerKeyTime(time.time(), remaining, self.budget))

    def _message(self, config: SessionConfig, stages: list[str]) -> str:
        names = sorted({PROVIDERS[config.choices()[stage].provider].label for stage in stages})
        return (
            f"Your {self.budget:.0f} s on this server's {' and '.join(names)} "
            f"key{'s' if len(names) > 1 else ''} are used up: "
            f"{', '.join(s.upper() for s in stages)} now run on the local models. "
            "Type your own API key to keep using them."
        )
