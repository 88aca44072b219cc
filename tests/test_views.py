"""Views registered by name: the layout and the renderer share one list."""

from __future__ import annotations

import gradio as gr

from pipeline import events as ev
from ui import state, views
from ui.layout import build_ui


def test_every_view_has_a_unique_name_and_a_rendering():
    names = [view.name for view in views.VIEWS]
    assert len(names) == len(set(names))
    rendered = views.render_all(state.initial_state())
    assert len(rendered) == len(views.VIEWS)


def test_charts_are_redrawn_only_when_a_turns_figures_are_in():
    before = state.initial_state()
    token = state.reduce(before, ev.BotToken(1.0, "Hello"))
    update = views.render_update(before, token)
    for view, value in zip(views.VIEWS, update, strict=True):
        assert isinstance(value, type(gr.skip())) == (view.chart or view.static), view.name
    measured = state.reduce(token, ev.LatencyMeasured(2.0, 0.8, (("llm", 0.3),)))
    assert measured.charts_version != token.charts_version
    redrawn = dict(zip(views.VIEWS, views.render_update(token, measured), strict=True))
    assert not any(isinstance(v, type(gr.skip())) for view, v in redrawn.items() if not view.static)


def test_the_page_has_one_element_per_view_wired_in_view_order():
    demo = build_ui()
    by_id = {
        block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)
    }
    for view in views.VIEWS:
        assert view.name in by_id, f"no #{view.name} on the page"
        assert isinstance(by_id[view.name], gr.Plot if view.chart else gr.HTML)
    dashboard = next(
        fn for fn in demo.fns.values() if [t[1] for t in fn.targets] == ["state_change"]
    )
    assert [block.elem_id for block in dashboard.outputs] == [v.name for v in views.VIEWS]


def test_the_page_lists_no_api_and_bounds_its_queue_and_uploads():
    demo = build_ui()
    assert all(not fn.show_api for fn in demo.fns.values())
    assert demo._queue.max_size is not None and demo._queue.max_size <= 100
    assert demo.delete_cache is not None  # Gradio's upload cache is pruned


def test_the_turn_timeline_is_a_chart_redrawn_per_turn_and_the_cost_a_live_panel():
    by_name = {view.name: view for view in views.VIEWS}
    assert by_name["turn-timeline"].chart and by_name["turn-timeline"].column == "dashboard"
    assert not by_name["cost"].chart and by_name["cost"].column == "dashboard"
    before = state.initial_state()
    spending = state.reduce(before, ev.UsageAmount(1.0, "tts_characters", 10))
    names = [view.name for view in views.VIEWS]
    update = dict(zip(names, views.render_update(before, spending), strict=True))
    assert isinstance(update["turn-timeline"], type(gr.skip()))
    assert "Cost" in update["cost"]
