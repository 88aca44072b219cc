"""Scripted events folded into the dashboard's state, as the session's publisher folds them."""

from __future__ import annotations

from functools import reduce

from pipeline import events as ev
from ui import state


def folded(*events: ev.Event, start: state.SessionState | None = None) -> state.SessionState:
    """The state after ``events``, from ``start`` (a fresh session's state by default)."""
    return reduce(state.reduce, events, start or state.initial_state())
