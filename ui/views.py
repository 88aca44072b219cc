"""The page's live views, registered by name: the one list the layout and the renderer share.

Each view is an element of the page (its ``name`` is its ``elem_id``) drawn
from the session state by one function. The layout creates one component per
view, in this order, in its column; every state update renders the views in
the same order. Adding a panel or a chart is one entry here, plus its render
function and its test.

Charts are the expensive views: they are redrawn only when a turn's figures
are complete (``SessionState.charts_version`` changed), never per token.
Static views do not depend on the session at all (the Scorecard: results
files read once): drawn when the page is built, never updated by a session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gradio as gr

from ui import charts, cost, heard, render, scorecard, timeline
from ui.state import SessionState

Column = Literal["talk", "dashboard"]


@dataclass(frozen=True)
class View:
    name: str
    draw: Callable[[SessionState], Any]
    column: Column
    chart: bool = False  # a Plotly figure, redrawn once per turn
    static: bool = False  # the same for every session: drawn with the page, then left alone

    def component(self, state: SessionState) -> gr.components.Component:
        if self.chart:
            return gr.Plot(self.draw(state), elem_id=self.name, show_label=False)
        return gr.HTML(self.draw(state), elem_id=self.name)


VIEWS: tuple[View, ...] = (
    View("status", render.render_status, "talk"),
    View("conversation", render.render_conversation, "talk"),
    View("user-live", render.render_user_live, "talk"),
    View("latency-stats", render.render_stats, "dashboard"),
    View("latency-breakdown", charts.breakdown_figure, "dashboard", chart=True),
    View("ttfb-chart", charts.ttfb_figure, "dashboard", chart=True),
    View("heard-latency", heard.render_heard, "dashboard"),
    View("turn-timeline", timeline.timeline_figure, "dashboard", chart=True),
    View("cost", cost.render_cost, "dashboard"),
    View("scorecard", scorecard.render_current, "dashboard", static=True),
)


def in_column(column: Column) -> list[View]:
    return [view for view in VIEWS if view.column == column]


def render_all(current: SessionState) -> tuple:
    """Every view, in :data:`VIEWS` order (the order the layout wires the outputs)."""
    return tuple(view.draw(current) for view in VIEWS)


def render_update(previous: SessionState | None, current: SessionState) -> tuple:
    """Like :func:`render_all`, but leaves the charts alone until a turn's figures are in.

    Static views are never redrawn: the page already shows them.
    """
    charts_changed = previous is None or previous.charts_version != current.charts_version
    return tuple(
        gr.skip() if view.static or (view.chart and not charts_changed) else view.draw(current)
        for view in VIEWS
    )
