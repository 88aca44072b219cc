"""The time one visitor may spend on the server's own API keys.

On a public Space the owner's keys serve every visitor who types none: without
a limit one visitor could talk on the owner's account for ever. The budget is
counted only while a generation runs on a server key; once it is spent, those
stages move to the local models, and picking them again without a key of
one's own stays local. A visitor's own key has no limit.

The time belongs to the visitor, not to the connection: a
:class:`ServerKeyLedger` shared by every session counts it per account over a
window (an hour by default), and each session charges every account its
visitor has (the web layer names them: the client's address and the page's
Gradio session), so reconnecting, reloading the page or coming back from
another address within the window all start where the visitor left off.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from pipeline import events as ev
from pipeline.config import SessionConfig
from pipeline.providers.base import Stage
from pipeline.providers.registry import PROVIDERS
from pipeline.server_settings import ServerSettings

# How often the time on the server's keys is counted and shown.
SERVER_KEY_TICK_SECS = 1.0
# Accounts remembered at once (least recently charged forgotten first).
MAX_ACCOUNTS = 100_000

_connections = itertools.count(1)


class ServerKeyLedger:
    """Seconds on the server's keys per account, each counted for a window from its first charge.

    Shared by every session of the process (the app makes one from its settings,
    :meth:`from_settings`; else :data:`SERVER_KEYS`); the web layer decides what
    an account is. ``budget_secs``: what each account may use per window (0:
    unlimited; None: each session reads ``VOICE_LAB_SERVER_KEY_SECS``).
    """

    def __init__(
        self,
        window_secs: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_accounts: int = MAX_ACCOUNTS,
        budget_secs: float | None = None,
    ):
        if window_secs is None:
            window_secs = ServerSettings.from_environ().server_key_window_secs
        self.window = window_secs
        self.budget_secs = budget_secs
        self._now = clock
        self._max = max_accounts
        # account -> (when its window started, seconds used in it)
        self._accounts: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ServerKeyLedger:
        return cls(settings.server_key_window_secs, budget_secs=settings.server_key_secs)

    def _current(self, account: str) -> tuple[float, float] | None:
        entry = self._accounts.get(account)
        if entry is not None and self._now() - entry[0] >= self.window:
            del self._accounts[account]
            return None
        return entry

    def used(self, accounts: Iterable[str]) -> float:
        """The most any of ``accounts`` has used in its window (one visitor, several names)."""
        return max((e[1] for a in accounts if (e := self._current(a))), default=0.0)

    def charge(self, accounts: Iterable[str], seconds: float) -> None:
        for account in accounts:
            started, used = self._current(account) or (self._now(), 0.0)
            self._accounts[account] = (started, used + seconds)
            self._accounts.move_to_end(account)
        while len(self._accounts) > self._max:
            self._accounts.popitem(last=False)


# Every session of this process charges here (one worker; docs/deploy.md on several).
SERVER_KEYS = ServerKeyLedger()


class ServerKeyBudget:
    """Counts a visitor's seconds on the server's keys and moves those stages local once spent.

    Until :meth:`bill_to` names the visitor, the time is the connection's own.
    """

    def __init__(
        self,
        report: Callable[[ev.Event], None],
        budget_secs: float | None = None,
        tick_secs: float = SERVER_KEY_TICK_SECS,
        clock: Callable[[], float] = time.monotonic,
        ledger: ServerKeyLedger | None = None,
        on_spent: Callable[[list[str], float], None] | None = None,
    ):
        self._report = report
        # Told every tick which providers' server keys ran and for how long (the
        # metrics), with or without a budget.
        self._on_spent = on_spent
        self._ledger = ledger if ledger is not None else ServerKeyLedger()
        # Seconds a visitor may spend on the server's own API keys (0: unlimited).
        if budget_secs is None:
            budget_secs = self._ledger.budget_secs
        if budget_secs is None:
            budget_secs = ServerSettings.from_environ().server_key_secs
        self.budget = budget_secs
        self._tick = tick_secs
        self._now = clock
        self._accounts: tuple[str, ...] = (f"connection:{next(_connections)}",)

    def bill_to(self, accounts: Iterable[str]) -> None:
        """Charge (and limit by) these accounts of the visitor from now on."""
        self._accounts = tuple(accounts) or self._accounts

    @property
    def used(self) -> float:
        return self._ledger.used(self._accounts)

    @property
    def remaining(self) -> float:
        return max(0.0, self.budget - self.used)

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
        self._ledger.charge(self._accounts, seconds)
        self._report(ev.ServerKeyTime(time.time(), self.remaining, self.budget))

    def _message(self, config: SessionConfig, stages: list[Stage]) -> str:
        names = sorted({PROVIDERS[config.choices()[stage].provider].label for stage in stages})
        return (
            f"Your {self.budget:.0f} s on this server's {' and '.join(names)} "
            f"key{'s' if len(names) > 1 else ''} are used up: "
            f"{', '.join(s.upper() for s in stages)} now run on the local models. "
            "Type your own API key to keep using them."
        )
