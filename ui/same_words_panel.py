"""Same words, other stack: the live turn and the same utterance on a second stack, side by side.

The button's handler (not the live event stream) draws ``#ab-comparison``:
the comparison is made on request, from two states, and the live updates,
which redraw every registered view from the live state ten times a second,
must not overwrite it. The live turn's figures come from the session's state;
the other stack's from its headless run (:mod:`pipeline.same_words`) folded by the
same reducer. Both are read per turn by :func:`turn_figures`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import gradio as gr
from fastrtc import WebRTC

from pipeline import events as ev
from pipeline.providers.base import STAGES, ProviderKeys, Stage, StageChoice
from pipeline.providers.local.models import LocalModels, shared_models
from pipeline.providers.registry import (
    PROVIDERS,
    choice_for,
    keys_from_environment,
    offline_choice,
)
from pipeline.same_words import (
    AB_TIMEOUT_SECS,
    ABRefused,
    HeadlessResult,
)
from pipeline.session import VoiceSession
from ui import cost, markup, timeline
from ui import settings as settings_panel
from ui.state import SessionState, initial_state, reduce
from ui.turnlog import TurnLog
from ui.webrtc_guard import WebRTCGuard, webrtc_id_of

# A/B runs at once across the server (each is a second pipeline on 2 vCPUs).
AB_CONCURRENCY = 2
NONE = "—"
# pipecat's label for the STT's part of voice-to-voice.
TRANSCRIPTION = "transcription"
ESTIMATED = "≈ "


@dataclass(frozen=True)
class TurnFigures:
    """One turn as the comparison shows it; None where the turn has no such figure."""

    stack: str
    heard: str
    reply: str
    v2v: float | None = None
    stt: float | None = None
    llm: float | None = None
    tts: float | None = None
    cost: float | None = None
    # pipecat's voice-to-voice contributions (label, seconds): the per-stage timeline.
    contributions: tuple[tuple[str, float], ...] = ()
    # ``stt`` is the breakdown's transcription part: the STT reported no TTFB for the turn.
    stt_estimated: bool = False


def turn_figures(state: SessionState, turn: int) -> TurnFigures:
    """User turn ``turn`` (1-based, as the reducer counts them) and the reply to it."""
    users = [i for i, t in enumerate(state.turns) if t.role == "user"]
    first_kept = state.user_turns - len(users) + 1
    index = users[turn - first_kept] if 0 <= turn - first_kept < len(users) else None
    heard = reply = ""
    stack = state.providers.label if state.providers else ""
    if index is not None:
        user = state.turns[index]
        heard = user.text
        stack = user.providers.label if user.providers else stack
        bot = next(iter(state.turns[index + 1 : index + 2]), None)
        if bot is not None and bot.role == "bot":
            reply = bot.text + (" (interrupted)" if bot.interrupted else "")
        elif turn == state.user_turns and state.bot is not None:
            reply = state.bot.generated  # still being spoken
    latency = next((entry for entry in state.latency if entry.turn == turn), None)
    contributions = latency.contributions if latency else ()
    ttfb = _first_ttfb(state, turn)
    # pipecat sometimes reports no STT TTFB for a turn (a transcript that it
    # judges earlier than the speech's end); the breakdown's part still says it.
    transcription = dict(contributions).get(TRANSCRIPTION)
    estimated = "stt" not in ttfb and transcription is not None
    return TurnFigures(
        stack=stack,
        heard=heard,
        reply=reply,
        v2v=latency.seconds if latency else None,
        stt=transcription if estimated else ttfb.get("stt"),
        llm=ttfb.get("llm"),
        tts=ttfb.get("tts"),
        cost=cost.turn_cost(state, turn),
        contributions=contributions,
        stt_estimated=estimated,
    )


def _turn_log(state: SessionState, turn: int) -> TurnLog | None:
    """The turn's record (its last one: a barge-in without words keeps the number)."""
    return next((log for log in reversed(state.turn_logs.turns) if log.number == turn), None)


def _first_ttfb(state: SessionState, turn: int) -> dict[str, float]:
    """Each stage's first time to first byte in the turn.

    From the turn's own record first: it holds what happened from the user's
    speech onset on, so an LLM asked speculatively, before the turn was
    committed, counts for this turn (the reducer's TTFB list files it under
    the previous one). The TTFB list serves turns whose record is gone.
    """
    found: dict[str, float] = {}
    log = _turn_log(state, turn)
    for event in log.events if log is not None else ():
        if isinstance(event, ev.ServiceTTFB):
            found.setdefault(event.stage, event.seconds)
    for point in state.ttfb:
        if point.turn == turn and not point.interrupted:
            found.setdefault(point.stage, point.seconds)
    return found


def turn_timeline(state: SessionState, turn: int):
    """The timeline figure (:mod:`ui.timeline`) of that one turn."""
    log = _turn_log(state, turn)
    only = replace(state.turn_logs, turns=(log,) if log is not None else ())
    return timeline.timeline_figure(replace(state, turn_logs=only))


def fold(events: tuple[ev.Event, ...]) -> SessionState:
    state = initial_state()
    for event in events:
        state = reduce(state, event)
    return state


# -- rendering -------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return NONE if seconds is None else f"{seconds * 1000:.0f} ms"


def _delta(live: float | None, other: float | None, unit: float = 1000, fmt: str = ".0f") -> str:
    if live is None or other is None:
        return ""
    diff = (other - live) * unit
    sign = "+" if diff > 0 else "−" if diff < 0 else "±"
    return f"{sign}{abs(diff):{fmt}}"


def _cost(dollars: float | None) -> str:
    return NONE if dollars is None else f"${dollars:.4f}"


@dataclass(frozen=True)
class Row:
    """One line of the comparison: what it is, each side's figure, and their difference."""

    key: str
    label: str
    live: str
    other: str
    delta: str = ""


def _stage_rows(live: TurnFigures, other: TurnFigures) -> list[Row]:
    """Where each turn's voice-to-voice went, part by part (pipecat's contributions)."""
    labels = list(dict.fromkeys(label for label, _ in (*live.contributions, *other.contributions)))
    live_parts, other_parts = dict(live.contributions), dict(other.contributions)
    return [
        _timing_row("part", label, live_parts.get(label), other_parts.get(label))
        for label in labels
    ]


def _timing_row(key: str, label: str, live: float | None, other: float | None) -> Row:
    delta = _delta(live, other)
    return Row(key, label, _ms(live), _ms(other), f"{delta} ms" if delta else "")


def _stt_row(live: TurnFigures, other: TurnFigures) -> Row:
    """STT TTFB, or else the transcription part of voice-to-voice, marked ≈ (no difference)."""

    def shown(figures: TurnFigures) -> str:
        return (ESTIMATED if figures.stt_estimated else "") + _ms(figures.stt)

    comparable = live.stt_estimated == other.stt_estimated
    delta = _delta(live.stt, other.stt) if comparable else ""
    return Row("stt", "STT", shown(live), shown(other), f"{delta} ms" if delta else "")


def render_comparison(
    live: TurnFigures, other: TurnFigures, *, seconds: float, error: str | None = None
) -> str:
    """Both turns side by side: what each heard and said, and each figure with the difference."""
    rows = [
        Row("stack", "Stack (STT · LLM · TTS)", live.stack, other.stack),
        Row("heard", "Heard", live.heard, other.heard),
        Row("reply", "Reply", live.reply, other.reply),
        _timing_row("v2v", "Voice-to-voice", live.v2v, other.v2v),
        _stt_row(live, other),
        _timing_row("llm", "LLM TTFB", live.llm, other.llm),
        _timing_row("tts", "TTS TTFB", live.tts, other.tts),
        Row("cost", "Cost", _cost(live.cost), _cost(other.cost)),
    ]
    return markup.render(
        "ab_comparison.html",
        seconds=seconds,
        problem=error or "",
        rows=rows,
        estimated=ESTIMATED if live.stt_estimated or other.stt_estimated else "",
        stages=_stage_rows(live, other),
        none_shown=NONE,
    )


def render_message(message: str, state: str = "error") -> str:
    """A refusal, an error or a progress line in place of the comparison."""
    return markup.render("ab_message.html", message=message, state=state)


# -- the run ---------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    live: TurnFigures
    other: TurnFigures
    seconds: float
    result: HeadlessResult
    # Both turns' timelines (Plotly figures).
    live_timeline: object = None
    other_timeline: object = None

    def render(self) -> str:
        return render_comparison(
            self.live, self.other, seconds=self.seconds, error=self.result.error
        )


async def compare(
    session: VoiceSession,
    choices: dict[Stage, StageChoice],
    keys: ProviderKeys,
    models: LocalModels,
    timeout: float = AB_TIMEOUT_SECS,
) -> Comparison:
    """Run the session's last utterance through ``choices``; raises ABRefused with the reason.

    Runs on the live calls' event loop only to read the session; the other
    stack runs on a thread and loop of its own.
    """
    utterance, result = await session.compare_last_utterance(choices, keys, models, timeout)
    # Read after the run: the live turn has had the same time to finish.
    live, other = session.state, fold(result.events)
    return Comparison(
        live=turn_figures(live, utterance.turn),
        other=turn_figures(other, 1),
        seconds=utterance.seconds,
        result=result,
        live_timeline=turn_timeline(live, utterance.turn),
        other_timeline=turn_timeline(other, 1),
    )


# -- the panel -------------------------------------------------------------------


@dataclass
class ABPanel:
    pickers: dict[Stage, tuple[gr.Dropdown, gr.Dropdown]]
    button: gr.Button
    result: gr.HTML
    timelines: tuple[gr.Plot, gr.Plot]


def build_ab_panel() -> ABPanel:
    """The controls, in the current Blocks context: the other stack, a button, the result."""
    pickers: dict[Stage, tuple[gr.Dropdown, gr.Dropdown]] = {}
    with gr.Accordion("Same words, other stack (A/B)", open=False, elem_id="ab-panel"):
        gr.Markdown(
            "Runs your last utterance, as the server heard it, through the stack picked here "
            "(your keys, the same settings), without touching the call, and shows both turns "
            "side by side.",
            elem_classes=["settings-hint"],
        )
        with gr.Row():
            for stage in STAGES:
                start = offline_choice(stage)
                with gr.Column(min_width=160):
                    picker = settings_panel.build_stage_picker(
                        stage, start.provider, start.model, id_prefix="ab-"
                    )
                pickers[stage] = (picker.provider, picker.model)
        button = gr.Button("Same words, other stack", elem_id="ab-button", size="sm")
        result = gr.HTML("", elem_id="ab-comparison")
        with gr.Row():
            timelines = (
                gr.Plot(label="Live call", visible=False, elem_id="ab-timeline-live"),
                gr.Plot(label="Other stack", visible=False, elem_id="ab-timeline-other"),
            )
    return ABPanel(pickers, button, result, timelines)


def _choices(picked: list) -> dict[Stage, StageChoice]:
    """The dropdowns' values (provider, model per stage) as stage choices; ABRefused if unknown."""
    choices = {}
    for index, stage in enumerate(STAGES):
        provider, model = picked[2 * index], picked[2 * index + 1]
        if provider not in PROVIDERS or stage not in PROVIDERS[provider].stages:
            raise ABRefused(f"Pick a {settings_panel.STAGE_TITLES[stage]} provider.")
        model = model if isinstance(model, str) and model.strip() else None
        choices[stage] = choice_for(provider, stage, model)
    return choices


def wire_ab_panel(panel: ABPanel, audio: WebRTC, settings: gr.State, guard: WebRTCGuard) -> None:
    """The model lists follow the provider; the button compares this visitor's own call only."""
    for stage, (provider, model) in panel.pickers.items():

        async def on_provider(current: settings_panel.PageSettings, provider_id: str, stage=stage):
            if provider_id not in PROVIDERS or stage not in PROVIDERS[provider_id].stages:
                return gr.update()
            found = await settings_panel.catalog(provider_id, stage, current.typed_keys())
            return gr.update(choices=list(found.models), value=found.default_model)

        provider.input(on_provider, [settings, provider], model, show_api=False)

    hidden = gr.update(visible=False)

    def message(text: str, state: str = "error") -> tuple:
        return render_message(text, state), hidden, hidden

    async def on_click(
        connection,
        current: settings_panel.PageSettings | None,
        stt_provider: str,
        stt_model: str,
        llm_provider: str,
        llm_model: str,
        tts_provider: str,
        tts_model: str,
        request: gr.Request,
    ) -> AsyncIterator[tuple]:
        picked = [stt_provider, stt_model, llm_provider, llm_model, tts_provider, tts_model]
        connection_id = webrtc_id_of(connection)
        session = audio.handlers.get(connection_id) if connection_id else None
        if not guard.owns(connection_id, request.session_hash) or not isinstance(
            session, VoiceSession
        ):
            yield message("Press Record and say something first: no call to compare yet.")
            return
        if session.finished.is_set():
            yield message("The call has ended: press Record, say something, then compare.")
            return
        typed = current.typed_keys() if current is not None else {}
        keys = keys_from_environment().with_overrides(typed)
        try:
            choices = _choices(picked)
            utterance = session.utterance.last
            if utterance is not None and not utterance.too_long:
                yield message(
                    f"Running your last {utterance.seconds:.1f} s of speech through "
                    f"{' · '.join(c.label for c in choices.values())}…",
                    "running",
                )
            comparison = await compare(session, choices, keys, shared_models())
        except ABRefused as e:
            yield message(str(e))
            return
        yield (
            comparison.render(),
            gr.update(value=comparison.live_timeline, visible=True),
            gr.update(value=comparison.other_timeline, visible=True),
        )

    inputs = [audio, settings, *(c for pair in panel.pickers.values() for c in pair)]
    panel.button.click(
        on_click,
        inputs=inputs,
        outputs=[panel.result, *panel.timelines],
        concurrency_limit=AB_CONCURRENCY,
        concurrency_id="ab-comparison",
        show_api=False,
    )
