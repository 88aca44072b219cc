"""Figures pooled over sessions, the targets next to the measurements, the text and HTML reports.

Targets are never asserted: a benchmark on a shared 2-core machine reports,
it does not fail. The summary says which were met on this run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from bench.figures import Underruns, summarize

# The HTML reports (bench/templates): every value escaped, only plotly's own markup marked safe.
PAGES = Environment(
    loader=PackageLoader("bench", "templates"), autoescape=True, undefined=StrictUndefined
)

# -- pooling -------------------------------------------------------------------------------


def _ttfb(entries: list[tuple[str, str, str | None, float]]) -> dict:
    """Per stage: the summary, and which service/model produced it."""
    by_stage: dict[str, list[float]] = defaultdict(list)
    labels: dict[str, set[str]] = defaultdict(set)
    for stage, service, model, seconds in entries:
        by_stage[stage].append(seconds)
        name = service.split("#")[0]  # one instance per session: "GroqLLMService#3"
        labels[stage].add(f"{name} {model}" if model else name)
    return {
        stage: {**summarize(values), "services": sorted(labels[stage])}
        for stage, values in sorted(by_stage.items())
    }


# pipecat's contribution labels in the order they happen in a turn.
CONTRIBUTION_ORDER = (
    "endpointing wait",
    "transcription",
    "turn detection",
    "first request",
    "LLM inference",
    "turn completion",
    "awaiting speakable text",
    "sentence aggregation",
    "speech synthesis",
    "output transport",
    "pipeline",
)


def _chronological(label: str) -> tuple[int, str]:
    order = CONTRIBUTION_ORDER.index(label) if label in CONTRIBUTION_ORDER else 99
    return (order, label)


def _ttfb_samples(entries: list[tuple[str, str, str | None, float]]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = defaultdict(list)
    for stage, _service, _model, seconds in entries:
        samples[stage].append(seconds)
    return dict(sorted(samples.items()))


def _turn_figures(turns) -> dict:
    done = [t for t in turns if t.voice_to_voice is not None]
    labels = sorted({label for t in done for label in t.contributions}, key=_chronological)
    gaps = Underruns()
    for t in turns:
        gaps.add(Underruns(t.underruns, t.underrun_seconds))
    injected = [t.injected for t in turns if t.injected]
    return {
        "voice_to_voice": summarize([t.voice_to_voice for t in turns]),
        "first_audio": summarize([t.first_audio for t in turns]),
        "contributions": {
            label: summarize([t.contributions[label] for t in done if label in t.contributions])
            for label in labels
        },
        "pipeline_overhead": summarize([t.pipeline_overhead for t in turns]),
        "pipeline_overhead_without_fallback": summarize(
            [t.pipeline_overhead for t in turns if not t.smart_turn_fallback]
        ),
        "smart_turn_fallbacks": sum(1 for t in turns if t.smart_turn_fallback),
        "slow_turn_decisions": sum(1 for t in turns if t.slow_turn_decision),
        "smart_turn_inference": summarize([s for t in turns for s in t.smart_turn_inference]),
        "interim_words": _interim_figures(turns),
        "injected": {
            stage: summarize([i[stage] for i in injected]) for stage in ("stt", "llm", "tts")
        },
        "barge_in_stop": summarize([t.barge_in_stop for t in turns]),
        "underruns": {"count": gaps.count, "gap_seconds": gaps.gap_seconds},
    }


def _interim_figures(turns) -> dict:
    """Of the turns whose STT shows interim words: how many showed them, and how early."""
    shown = [t for t in turns if t.interim_before_final is not None]
    return {
        "turns": len(shown),
        "before_final": sum(1 for t in shown if t.interim_before_final),
        "while_speaking": sum(1 for t in shown if t.interim_while_speaking),
    }


def speculation_figures(results) -> dict:
    """Speculative turns: started, adopted or discarded (and why), tokens wasted, head start."""
    ended = [e for r in results for e in r.speculations]
    reasons: dict[str, int] = defaultdict(int)
    for e in ended:
        if not e.adopted:
            reasons[e.reason] += 1
    return {
        "started": sum(r.speculations_started for r in results),
        "adopted": sum(1 for e in ended if e.adopted),
        "discarded": sum(1 for e in ended if not e.adopted),
        "discard_reasons": dict(sorted(reasons.items())),
        "wasted_tokens": sum(e.wasted_tokens for e in ended),
        "wasted_tts_chars": sum(e.wasted_chars for e in ended),
        # Seconds an adopted reply started before its turn was confirmed.
        "head_start": summarize([e.saved_ms / 1000 for e in ended if e.adopted]),
    }


def pooled_figures(results) -> dict:
    """Every figure over all sessions' turns together."""
    turns = [t for r in results for t in r.turns]
    return {
        **_turn_figures(turns),
        "ttfb": _ttfb([e for r in results for e in r.ttfb]),
        "ttfb_samples": _ttfb_samples([e for r in results for e in r.ttfb]),
        "ui_event_delay": summarize([d for r in results for d in r.ui_delays]),
        "session_startup": summarize([r.startup_seconds for r in results]),
        "turns_completed": sum(1 for t in turns if t.voice_to_voice is not None),
        "errors": [e for r in results for e in r.errors],
        "speculation": speculation_figures(results),
    }


def session_figures(result) -> dict:
    """One session's own figures (the same names as the pooled ones)."""
    return {
        "session": result.index,
        "startup_seconds": result.startup_seconds,
        **_turn_figures(result.turns),
        "ttfb": _ttfb(result.ttfb),
        "ui_event_delay": summarize(result.ui_delays),
        "errors": result.errors,
        "speculation": speculation_figures([result]),
    }


# -- targets -------------------------------------------------------------------------------


def _target(name, profile, sessions, measured, limit, unit="s", *, applies, note=""):
    if not applies:
        status = "n/a"
    elif measured is None:
        status = "not measured"
    else:
        status = "met" if measured <= limit else "missed"
    return {
        "name": name,
        "for": f"{profile}, {sessions} session{'s' if sessions > 1 else ''}",
        "target": limit,
        "unit": unit,
        "measured": measured,
        "status": status,
        "note": note,
    }


def targets(result: dict, baseline_p95: float | None = None) -> list[dict]:
    """The issue's targets for this profile, each with this run's measurement and met/missed."""
    profile, n = result["profile"], result["sessions"]
    if profile == "local":
        v2v = result["voice_to_voice"]
        return [
            _target("v2v median", "local", 1, v2v["median"], 1.0, applies=n == 1),
            _target("v2v p95", "local", 1, v2v["p95"], 1.3, applies=n == 1),
        ]
    p95 = result["voice_to_voice"]["p95"]
    ratio = None if p95 is None or not baseline_p95 else p95 / baseline_p95 - 1
    return [
        _target(
            "pipeline overhead p95",
            "cloud-sim",
            1,
            result["pipeline_overhead"]["p95"],
            0.050,
            applies=n == 1,
            note=f"{ms(result['pipeline_overhead_without_fallback']['p95'])} without "
            f"{result['smart_turn_fallbacks']} Smart Turn fallback(s)"
            if result["smart_turn_fallbacks"]
            else "",
        ),
        _target(
            "barge-in stop p95", "cloud-sim", 1, result["barge_in_stop"]["p95"], 0.4, applies=n == 1
        ),
        _target("underruns", "cloud-sim", 20, result["underruns"]["count"], 0, "", applies=n >= 20),
        _target(
            "v2v p95 over 1-session p95",
            "cloud-sim",
            20,
            ratio,
            0.15,
            "",
            applies=n >= 20,
            note="" if baseline_p95 else "needs --baseline or --sweep 1,...,20",
        ),
        _target(
            "peak RSS", "cloud-sim", 20, result["peak_rss_mb"] / 1024, 3.0, "GB", applies=n >= 20
        ),
    ]


# -- text summary --------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _line(label: str, figures: dict) -> str:
    return (
        f"{label:<24} median {ms(figures['median']):>8}  p95 {ms(figures['p95']):>8}  "
        f"max {ms(figures['max']):>8}  n {figures['n']}"
    )


def _measured(t: dict) -> str:
    value = t["measured"]
    if value is None:
        return "-"
    if t["unit"] == "s":
        return ms(value)
    if t["name"].startswith("v2v p95 over"):
        return f"{value * 100:+.0f} %"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f} {t['unit']}".strip()


def _limit(t: dict) -> str:
    if t["unit"] == "s":
        return f"<= {ms(t['target'])}"
    if t["name"].startswith("v2v p95 over"):
        return f"<= +{t['target'] * 100:.0f} %"
    return f"{'<' if t['unit'] else '='} {t['target']:g} {t['unit']}".strip()


def format_summary(result: dict) -> str:
    dashboard = "on" if result["dashboard"] else "off"
    contended = result.get("contending_processes")
    lines = [
        f"profile {result['profile']}: {result['sessions']} session(s) x "
        f"{result['turns_per_session']} turns, dashboard {dashboard}, "
        f"{f'{contended} busy process(es) beside, ' if contended else ''}"
        f"start-up {result['startup_seconds']:.1f} s, wall {result['wall_seconds']:.1f} s",
        _line("voice-to-voice", result["voice_to_voice"]),
        _line("first audio out", result["first_audio"]),
    ]
    for label, figures in result["contributions"].items():
        lines.append(_line(f"  {label}", figures))
    if result["profile"].startswith("cloud-sim"):
        lines.append(_line("pipeline overhead", result["pipeline_overhead"]))
        lines.append(_line("  w/o turn fallbacks", result["pipeline_overhead_without_fallback"]))
        for stage, figures in result["injected"].items():
            lines.append(_line(f"  injected {stage}", figures))
    for stage, figures in result["ttfb"].items():
        lines.append(_line(f"TTFB {stage}", figures) + f"  ({', '.join(figures['services'])})")
    lines.append(_line("barge-in stop", result["barge_in_stop"]))
    if spec := result.get("speculation"):
        reasons = ", ".join(f"{n} {why}" for why, n in spec["discard_reasons"].items())
        lines.append(
            f"speculation              {spec['started']} started, {spec['adopted']} adopted, "
            f"{spec['discarded']} discarded{f' ({reasons})' if reasons else ''}, "
            f"{spec['wasted_tokens']} tokens wasted"
        )
        lines.append(_line("  head start (adopted)", spec["head_start"]))
    lines.append(
        f"Smart Turn fallbacks     {result['smart_turn_fallbacks']} of "
        f"{len(result['turns'])} turns (judged unfinished: the turn waited out the fallback "
        f"timeout); {result['slow_turn_decisions']} turn decisions took over 1 s"
    )
    lines.append(_line("  Smart Turn inference", result["smart_turn_inference"]))
    interim = result["interim_words"]
    lines.append(
        f"interim words            before the final transcript in {interim['before_final']} of "
        f"{interim['turns']} turns, while the question was spoken in {interim['while_speaking']}"
        if interim["turns"]
        else "interim words            none (this STT sends only final transcripts)"
    )
    if result["dashboard"]:
        lines.append(_line("UI event delay", result["ui_event_delay"]))
        cost = result["observer_cost_us"]
        if cost["n"]:
            lines.append(
                f"observer cost            median {cost['median']:.1f} us  p95 "
                f"{cost['p95']:.1f} us per frame over {cost['n']} pushes"
            )
    under = result["underruns"]
    lines.append(
        f"underruns                {under['count']} ({under['gap_seconds']:.2f} s of gaps)"
    )
    if result["sessions"] > 1:
        per = ", ".join(str(s["underruns"]["count"]) for s in result["per_session"])
        lines.append(f"  per session            {per}")
    lines.append(
        f"CPU {result['cpu_seconds']:.1f} s ({result['cpu_seconds_per_session']:.2f} s/session), "
        f"of which the event loop's thread {result['loop_cpu_seconds']:.1f} s "
        f"(busy {result['loop_busy'] * 100:.0f} % of the wall time), "
        f"peak RSS {result['peak_rss_mb']:.0f} MB (baseline {result['rss_baseline_mb']:.0f} MB, "
        f"+{result['rss_increment_per_session_mb']:.0f} MB/session)"
    )
    machine = result["machine"]
    lines.append(
        f"load avg before {fmt_load(result['loadavg_before'])}, after "
        f"{fmt_load(result['loadavg_after'])} ({machine['cpus']} CPUs)"
    )
    for level in result.get("sweep", []):
        lines.append(
            f"sweep {level['sessions']:>2} sessions: v2v median {ms(level['v2v_median'])}, "
            f"p95 {ms(level['v2v_p95'])}, underruns {level['underruns']}, "
            f"fallbacks {level['smart_turn_fallbacks']}, "
            f"interim shown {level['interim_words']['before_final']}/"
            f"{level['interim_words']['turns']}, "
            f"CPU {level['cpu_seconds_per_session']:.1f} s/session, "
            f"load {level['loadavg_before'][0]:.2f} -> {level['loadavg_after'][0]:.2f}"
        )
    if "app_startup" in result:
        startup = result["app_startup"]
        ready = {k: v for k, v in startup.items() if k.endswith("_seconds")}
        lines.append("app start-up " + ", ".join(f"{k} {v:.1f} s" for k, v in ready.items()))
    if "webrtc" in result:
        client = result["webrtc"].get("voice_to_voice_client")
        if client:
            lines.append(_line("WebRTC v2v (client)", client))
        webrtc = result["webrtc"]
        if "mouth_to_ear" in webrtc:
            lines.append(_line("WebRTC mouth-to-ear", webrtc["mouth_to_ear"]))
            lines.append(_line("  server V2V, same turns", webrtc["server_v2v"]))
            lines.append(_line("  heard minus server", webrtc["heard_minus_server"]))
            for part, figures in webrtc["heard_parts"].items():
                lines.append(_line(f"    {part}", figures))
    if result["errors"]:
        lines.append(f"errors ({len(result['errors'])}): " + "; ".join(result["errors"][:5]))
    lines.append("targets (reported, not asserted):")
    for t in result["targets"]:
        note = f" ({t['note']})" if t["note"] else ""
        lines.append(
            f"  {t['name']:<28} [{t['for']}] {_limit(t):<12} measured {_measured(t):<10} "
            f"{t['status']}{note}"
        )
    return "\n".join(lines)


def fmt_load(load) -> str:
    return "/".join(f"{x:.2f}" for x in load)


# -- HTML ----------------------------------------------------------------------------------


def _stacked_v2v(result: dict):
    import plotly.graph_objects as go

    turns = [t for t in result["turns"] if t["voice_to_voice"] is not None]
    x = [f"s{t['session']} t{t['index']}" for t in turns]
    labels = list(result["contributions"])
    fig = go.Figure(
        [
            go.Bar(name=label, x=x, y=[t["contributions"].get(label, 0) for t in turns])
            for label in labels
        ]
    )
    fig.add_trace(
        go.Scatter(
            name="voice-to-voice",
            x=x,
            y=[t["voice_to_voice"] for t in turns],
            mode="markers",
            marker={"color": "black", "symbol": "line-ew-open", "size": 14},
        )
    )
    fig.update_layout(
        barmode="stack",
        title="Voice-to-voice per turn, stacked by contribution (s)",
        xaxis_title="session, turn",
        yaxis_title="seconds",
    )
    return fig


def _distributions(result: dict):
    import plotly.graph_objects as go

    series = {
        "voice-to-voice": [t["voice_to_voice"] for t in result["turns"]],
        "first audio out": [t["first_audio"] for t in result["turns"]],
        "pipeline overhead": [t["pipeline_overhead"] for t in result["turns"]],
        "barge-in stop": [t["barge_in_stop"] for t in result["turns"]],
    }
    fig = go.Figure()
    for name, values in series.items():
        values = [v for v in values if v is not None]
        if values:
            fig.add_trace(go.Box(name=name, y=values, boxpoints="all", jitter=0.4))
    fig.update_layout(title="Distributions per figure (s)", yaxis_title="seconds")
    return fig


def _ttfb_chart(result: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for stage, values in result["ttfb_samples"].items():
        services = ", ".join(result["ttfb"][stage]["services"])
        fig.add_trace(go.Box(name=f"{stage}: {services}", x=[stage] * len(values), y=values))
    if result["profile"].startswith("cloud-sim"):
        injected = {k: v for k, v in result["injected"].items() if v["n"]}
        fig.add_trace(
            go.Scatter(
                name="median latency injected by the fake",
                x=list(injected),
                y=[v["median"] for v in injected.values()],
                mode="markers",
                marker={"symbol": "diamond", "size": 12, "color": "black"},
            )
        )
    fig.update_layout(
        title="Time to first byte per service (s)",
        yaxis_title="seconds",
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def _concurrency_chart(result: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if result.get("sweep"):
        levels = result["sweep"]
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        x = [level["sessions"] for level in levels]
        fig.add_trace(go.Scatter(name="v2v median", x=x, y=[lv["v2v_median"] for lv in levels]))
        fig.add_trace(go.Scatter(name="v2v p95", x=x, y=[lv["v2v_p95"] for lv in levels]))
        fig.add_trace(
            go.Bar(name="underruns", x=x, y=[lv["underruns"] for lv in levels], opacity=0.4),
            secondary_y=True,
        )
        fig.update_layout(title="Concurrency sweep", xaxis_title="concurrent sessions")
        fig.update_yaxes(title_text="seconds", secondary_y=False)
        fig.update_yaxes(title_text="underruns", secondary_y=True, rangemode="tozero")
        fig.update_xaxes(dtick=1)
        return fig
    fig = go.Figure()
    for session in result["per_session"]:
        values = [
            t["voice_to_voice"]
            for t in result["turns"]
            if t["session"] == session["session"] and t["voice_to_voice"] is not None
        ]
        fig.add_trace(
            go.Box(
                name=f"s{session['session']} ({session['underruns']['count']} underruns)",
                y=values,
                boxpoints="all",
            )
        )
    fig.update_layout(
        title=f"Voice-to-voice per session, {result['sessions']} concurrent (s)",
        yaxis_title="seconds",
        showlegend=False,
    )
    return fig


def _heard_parts_chart(result: dict):
    """WebRTC (``--webrtc-sessions``): where each turn's mouth-to-ear time went, stacked."""
    import plotly.graph_objects as go

    turns = [
        t for s in result["webrtc"]["per_session"] for t in s.get("turns", []) if t.get("parts")
    ]
    x = [f"t{i + 1}" for i in range(len(turns))]
    fig = go.Figure(
        [
            go.Bar(name=part, x=x, y=[t["parts"].get(part, 0) for t in turns])
            for part in result["webrtc"]["heard_parts"]
        ]
    )
    fig.update_layout(
        barmode="stack",
        title="WebRTC mouth-to-ear per turn: the server's V2V and the wait beyond it (s)",
        yaxis_title="seconds",
    )
    return fig


def _target_rows(result: dict) -> list[tuple[str, str, str, str, str]]:
    """Each target as the report's table shows it: name, what for, limit, measured, status."""
    return [(t["name"], t["for"], _limit(t), _measured(t), t["status"]) for t in result["targets"]]


def _page(template: str, path: Path, **values: object) -> None:
    """Write ``bench/templates/<template>`` filled with ``values`` (escaped) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PAGES.get_template(template).render(**values), encoding="utf-8")


def write_html(result: dict, path: Path, scorecards: list[dict] | None = None) -> None:
    """A self-contained report: plotly.js inlined once, so the file works offline.

    ``scorecards``: the stacks' latest suite results (``evals/results``), shown
    side by side beside the latency figures.
    """
    from plotly.offline import get_plotlyjs

    charts = [
        _stacked_v2v(result),
        _distributions(result),
        _ttfb_chart(result),
        _concurrency_chart(result),
    ]
    if result.get("webrtc", {}).get("heard_parts"):
        charts.append(_heard_parts_chart(result))
    body = "".join(
        fig.to_html(full_html=False, include_plotlyjs=False, default_height=460) for fig in charts
    )
    _page(
        "benchmark.html",
        path,
        profile=result["profile"],
        sessions=result["sessions"],
        measured_at=result["measured_at"],
        targets=_target_rows(result),
        summary=format_summary(result),
        scorecard=scorecard_section(scorecards or []),
        charts=body,
        plotly_js=get_plotlyjs(),
        result_json=json.dumps(result, indent=1),
    )


# -- peers: the systems side by side (python -m bench --peers) ------------------------------


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def format_peers(result: dict) -> str:
    """The race as a table: each system's figures and their ratio to Voice Lab's."""
    lines = [
        f"peers on {result['profile']}: {result['turns_per_system']} turns each, interleaved "
        f"(wall {result['wall_seconds']:.0f} s)",
        f"{'system':<18} {'v2v p50':>9} {'v2v p95':>9} {'barge-in':>9} {'CPU/turn':>9}   "
        "ratio to Voice Lab (v2v p50 / p95 / barge-in / CPU)",
    ]
    for peer in result["peers"]:
        ratio = peer["ratio_to_voice_lab"]
        cpu = peer["cpu"]["mean_per_turn"]
        lines.append(
            f"{peer['name']:<18} {ms(peer['v2v']['median']):>9} {ms(peer['v2v']['p95']):>9} "
            f"{ms(peer['barge_in']['median']):>9} "
            f"{'-' if cpu is None else f'{cpu:.2f} s':>9}   "
            f"{_times(ratio['v2v_median'])} / {_times(ratio['v2v_p95'])} / "
            f"{_times(ratio['barge_in_median'])} / {_times(ratio['cpu_per_turn'])}"
        )
    for peer in result["peers"]:
        lines.append(f"  {peer['name']}: {peer['follows']}")
        if peer["errors"]:
            lines.append(f"    errors: {'; '.join(peer['errors'])}")
    machine = result["machine"]
    lines.append(
        f"load avg before {fmt_load(machine['loadavg_before'])}, after "
        f"{fmt_load(machine['loadavg_after'])} ({machine['cpus']} CPUs)"
    )
    return "\n".join(lines)


def _peers_bars(result: dict):
    """V2V p50 and p95, barge-in stop and CPU per turn, one group of bars per system."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [p["name"] for p in result["peers"]]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("Voice-to-voice (s)", "Barge-in stop (s)", "CPU per turn (s)"),
    )
    for label, key in (("p50", "median"), ("p95", "p95")):
        fig.add_trace(
            go.Bar(name=f"v2v {label}", x=names, y=[p["v2v"][key] for p in result["peers"]]),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Bar(name="barge-in p50", x=names, y=[p["barge_in"]["median"] for p in result["peers"]]),
        row=1,
        col=2,
    )
    fig.add_trace(
        go.Bar(
            name="CPU per turn", x=names, y=[p["cpu"]["mean_per_turn"] for p in result["peers"]]
        ),
        row=1,
        col=3,
    )
    fig.update_layout(
        barmode="group",
        title=f"The systems side by side ({result['profile']}, same turns, same run)",
    )
    return fig


def _peers_distributions(result: dict):
    """Every turn's V2V per system, so a p95 is seen with the turns it comes from."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for peer in result["peers"]:
        values = [
            t["v2v"]
            for t in result["turns"]
            if t["system"] == peer["name"] and t["v2v"] is not None
        ]
        fig.add_trace(go.Box(name=peer["name"], y=values, boxpoints="all", jitter=0.4))
    fig.update_layout(title="Voice-to-voice per turn (s)", yaxis_title="seconds", showlegend=False)
    return fig


def _peer_rows(result: dict) -> list[list[str]]:
    """Each system's figures and their ratios to Voice Lab's, as the report's table shows them."""
    rows = []
    for p in result["peers"]:
        ratio = p["ratio_to_voice_lab"]
        cpu = p["cpu"]["mean_per_turn"]
        rows.append(
            [
                p["name"],
                ms(p["v2v"]["median"]),
                ms(p["v2v"]["p95"]),
                ms(p["barge_in"]["median"]),
                "-" if cpu is None else f"{cpu:.2f} s",
                *(
                    _times(ratio[k])
                    for k in ("v2v_median", "v2v_p95", "barge_in_median", "cpu_per_turn")
                ),
                p["follows"],
            ]
        )
    return rows


def write_peers_html(result: dict, path: Path) -> None:
    """The race's report: the table, the systems' bars side by side, every turn (offline page)."""
    from plotly.offline import get_plotlyjs

    charts = "".join(
        fig.to_html(full_html=False, include_plotlyjs=False, default_height=460)
        for fig in (_peers_bars(result), _peers_distributions(result))
    )
    _page(
        "peers.html",
        path,
        profile=result["profile"],
        measured_at=result["measured_at"],
        rows=_peer_rows(result),
        summary=format_peers(result),
        charts=charts,
        plotly_js=get_plotlyjs(),
        result_json=json.dumps(result, indent=1),
    )


# -- evals: the scorecard ------------------------------------------------------------------


def scorecard_section(runs: list[dict]) -> str:
    """One row per stack, side by side: pass rate, V2V p50/p95, heard - server, cost."""
    from ui.scorecard import render_scorecard

    return render_scorecard(runs)


def _scenario_rows(run: dict) -> list[tuple[str, str, str, str, str]]:
    """Each scenario: name, verdict, V2V per turn, what was unmet, what the bot said."""
    rows = []
    for s in run["scenarios"]:
        notes = [f"{f['criterion']}: {f['reason']}" for f in s["failed"]]
        notes += [f"not judged: {f['criterion']}" for f in s["not_judged"]]
        notes += [s["note"]] if s["note"] else []
        said = " / ".join(t["bot_said"] for t in s["turns"] if t["bot_said"])
        v2v = ", ".join(ms(v) for v in s["v2v"]) or "-"
        rows.append((s["name"], s["verdict"], v2v, "; ".join(notes), said))
    return rows


def write_scorecard_html(runs: list[dict], path: Path) -> None:
    """The evals' report: the scorecard section, then each stack's scenarios."""
    stacks = [
        {
            "name": run["stack"],
            "real": run["real_providers"],
            "measured_at": run["measured_at"],
            "judge": str(run["judge"]),
            "scenarios": _scenario_rows(run),
        }
        for run in runs
        if run.get("scenarios")
    ]
    _page(
        "scorecard.html",
        path,
        scorecard=scorecard_section(runs),
        stacks=stacks,
        results_json=json.dumps(runs, indent=1),
    )
