"""Run a folder of scenarios on one stack with pipecat's eval harness; one result per scenario.

Every ``*.yaml`` in the folder is loaded with pipecat's own loader
(``EvalScenarioFile``), so any scenario in pipecat's format runs unchanged;
each is driven by pipecat's ``EvalSession`` against :class:`~bench.evals.bot.EvalBot`,
one conversation (one fresh pipeline) per scenario, one scenario at a time.

A scenario's result is pipecat's verdict (passed, the failed expectations
with their kind and reason) joined with what the bot's side reported for
the same conversation: each harness turn's voice-to-voice latency, the
words the bot said, the tools it called, the usage and its price. The two
sides share the process's wall clock, which is how a harness turn is matched
to the bot's events: a turn runs from its send to the next turn's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipecat.evals.results import EvalScriptResult, EvalScriptTurnProgress, EvalSimulationResult
from pipecat.evals.scenario import EvalScenarioFile, is_scenario_file
from pipecat.evals.script import EvalExpectation, EvalScriptScenario
from pipecat.evals.script_session import EvalScriptSession
from pipecat.evals.session import EvalSession, EvalSessionParams
from pipecat.evals.tts import CachingTTSService

from bench.evals.bot import Conversation, EvalBot
from bench.evals.harness import HarnessEars, JudgeSettings, judge_llm, make_judge, user_voice
from pipeline import events as ev
from pipeline import pricing
from pipeline.providers.local.models import LocalModels

log = logging.getLogger("bench.evals")

SCENARIO_SUFFIXES = (".yaml", ".yml")
# How long the bot may take to wind a conversation down once the harness has left.
CONVERSATION_END_SECS = 10.0
# An expectation without ``within_ms`` waits this long (pipecat's default is 60 s).
DEFAULT_TIMEOUT_MS = 30000
# What a failure may quote of the bot's words.
MAX_WORDS_CHARS = 300

# How the scorecard words a scenario's outcome.
PASSED, FAILED, NOT_JUDGED, SKIPPED = "passed", "failed", "not judged", "skipped"


@dataclass
class Loaded:
    """One scenario to run: its result name, file and parsed scenario (or why it did not load)."""

    name: str
    path: Path
    scenario: object | None = None
    error: str | None = None


def load_folder(folder: Path, only: list[str] | None = None) -> list[Loaded]:
    """Every scenario of every ``*.yaml`` in ``folder``, named by file (and by scenario too
    when a file holds several)."""
    loaded: list[Loaded] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in SCENARIO_SUFFIXES):
        if not is_scenario_file(path):
            continue  # a fragment the scenarios !include
        if only and path.stem not in only:
            continue
        try:
            scenarios = list(EvalScenarioFile.load(path))
        except (ValueError, OSError) as e:
            loaded.append(Loaded(path.stem, path, error=f"could not load: {e}"))
            continue
        for scenario in scenarios:
            name = path.stem if len(scenarios) == 1 else f"{path.stem}/{scenario.name}"
            loaded.append(Loaded(name, path, scenario))
    return loaded


def scale_budgets(loaded: list[Loaded], scale: float) -> None:
    """Multiply every expectation's ``within_ms`` by ``scale`` (an absence's quiet window stays).

    For the tests on a shared CI machine: a slow turn is then judged on what
    it said rather than on time. The benchmark runs the budgets as written.
    """
    if scale == 1:
        return
    for item in loaded:
        if isinstance(item.scenario, EvalScriptScenario):
            for turn in item.scenario.turns:
                for expectation in turn.expect:
                    if expectation.within_ms is not None and not expectation.absent:
                        expectation.within_ms = round(expectation.within_ms * scale)


def recordings_of(loaded: list[Loaded]) -> dict[Path, str]:
    """Each recording a scripted turn plays, with the words it says (the turn's ``user:``)."""
    found: dict[Path, str] = {}
    for item in loaded:
        if isinstance(item.scenario, EvalScriptScenario):
            for turn in item.scenario.turns:
                if turn.audio and turn.user:
                    found[Path(turn.audio)] = turn.user
    return found


@dataclass
class Failure:
    """An unmet expectation: where, how (pipecat's failure kind), and what the bot said then."""

    turn: int
    expectation: int
    criterion: str
    kind: str
    reason: str
    bot_said: str = ""


def describe(expectation: EvalExpectation | None, event: str) -> str:
    """An expectation in a few words: "tts_response contains 'Paris'"."""
    if expectation is None:
        return event  # the turn itself (a send_after that never fired) or the connection
    parts = [expectation.event]
    if expectation.absent:
        parts = [f"no {expectation.event}"]
    if expectation.text_contains is not None:
        parts.append(f"contains {expectation.text_contains!r}")
    if expectation.text_excludes is not None:
        parts.append(f"without {expectation.text_excludes!r}")
    if expectation.calls:
        parts.append(", ".join(call.signature for call in expectation.calls))
    if expectation.eval is not None:
        parts.append(f"judged: {expectation.eval!r}")
    if expectation.within_ms is not None:
        parts.append(f"within {expectation.within_ms} ms")
    return " ".join(parts)


@dataclass
class TurnRecord:
    index: int
    user: str
    status: str
    bot_said: str = ""
    # The bot started a reply in this turn: a turn without one has no V2V (it counts
    # against the scorecard as unanswered, not as a fast or slow reply).
    answered: bool = False
    v2v: list[float] = field(default_factory=list)
    heard_minus_server: list[float] = field(default_factory=list)


@dataclass
class ScenarioResult:
    """One scenario on one stack: pipecat's verdict and the bot's side of the conversation."""

    name: str
    file: str
    kind: str
    verdict: str
    passed: bool
    failed: list[Failure] = field(default_factory=list)
    not_judged: list[Failure] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    tools: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    cost_usd: float = 0.0
    seconds: float = 0.0
    note: str = ""

    @property
    def v2v(self) -> list[float]:
        return [v for t in self.turns for v in t.v2v]

    @property
    def heard_minus_server(self) -> list[float]:
        return [v for t in self.turns for v in t.heard_minus_server]

    def as_dict(self) -> dict:
        return {**asdict(self), "v2v": self.v2v, "heard_minus_server": self.heard_minus_server}


class SuiteRunner:
    """Runs scenarios one after another against one bot; see the module docstring."""

    def __init__(
        self,
        bot: EvalBot,
        models: LocalModels,
        *,
        judge: JudgeSettings | None,
        record_dir: Path | None = None,
        cache_dir: str | None = None,
    ):
        self._bot = bot
        self._models = models
        self._judge = judge
        self._record_dir = record_dir
        self._cache_dir = cache_dir
        # The harness's own Whisper, loaded only if a scenario needs it.
        self._ears_models = LocalModels(stt_threads=1)

    async def run(self, item: Loaded) -> ScenarioResult:
        started = time.monotonic()
        if item.error is not None or item.scenario is None:
            return self._result(item, "script", SKIPPED, note=item.error or "not a scenario")
        if not isinstance(item.scenario, EvalScriptScenario):
            result = await self._simulate(item)
        else:
            result = await self._script(item, item.scenario)
        result.seconds = round(time.monotonic() - started, 2)
        return result

    def _result(self, item: Loaded, kind: str, verdict: str, **fields) -> ScenarioResult:
        return ScenarioResult(
            name=item.name,
            file=item.path.name,
            kind=kind,
            verdict=verdict,
            passed=verdict == PASSED,
            **fields,
        )

    def _ears(self, scenario, recorded: bool) -> HarnessEars | None:
        """The harness's STT for the bot's audio, when the harness gets the bot's audio."""
        if not scenario.bot_audio or not (scenario.wants_response() or recorded):
            return None
        return HarnessEars(self._ears_models, transcribe=scenario.wants_response())

    def _params(self, item: Loaded) -> EvalSessionParams:
        record = None
        if self._record_dir is not None:
            record = str(self._record_dir / f"{item.name.replace('/', '--')}.wav")
        return EvalSessionParams(
            default_timeout_ms=DEFAULT_TIMEOUT_MS, record_path=record, cache_dir=self._cache_dir
        )

    def _voice(self, scenario) -> CachingTTSService | None:
        """The user's voice, for turns spoken from text (not needed when all are recordings)."""
        if scenario.user_speech is None:
            return None
        return user_voice(self._models, scenario.user_speech, self._cache_dir)

    async def _script(self, item: Loaded, scenario: EvalScriptScenario) -> ScenarioResult:
        params = self._params(item)
        ears = self._ears(scenario, params.record_path is not None)
        session = EvalScriptSession(
            scenario,
            self._bot.url,
            params=params,
            judge=make_judge(self._judge),
            user_tts=self._voice(scenario),
            bot_stt=ears,
        )
        turn_started: dict[int, float] = {}

        @session.event_handler("on_progress")
        async def _on_progress(_session, record):
            if isinstance(record, EvalScriptTurnProgress) and record.status == "turn":
                turn_started.setdefault(record.turn_index, time.time())

        outcome, bot = await self._converse(session)
        return self._scored(item, scenario, outcome, bot, turn_started, ears)

    async def _simulate(self, item: Loaded) -> ScenarioResult:
        """A simulation needs an LLM to play the caller: the judge's, when there is one."""
        if self._judge is None:
            return self._result(
                item,
                "simulation",
                NOT_JUDGED,
                note="a simulation needs an LLM to play the caller and judge the call: "
                "configure a judge (VOICE_LAB_EVAL_JUDGE_URL, or a Groq key)",
            )
        scenario = item.scenario
        session = EvalSession.from_scenario(
            scenario,
            self._bot.url,
            params=self._params(item),
            persona_llm=judge_llm(self._judge),
            judge=make_judge(self._judge),
            user_tts=self._voice(scenario),
            bot_stt=self._ears(scenario, self._record_dir is not None),
        )
        outcome, bot = await self._converse(session)
        result = self._result(
            item,
            "simulation",
            PASSED if outcome.passed else FAILED,
            note=outcome.failure or outcome.reason,
        )
        self._add_bot_side(result, bot)
        return result

    async def _converse(
        self, session: EvalSession
    ) -> tuple[EvalScriptResult | EvalSimulationResult, Conversation | None]:
        """Run one session: pipecat's result, and the bot's side once it has ended."""
        before = len(self._bot.conversations)
        result = await session.run()
        bot = self._bot.conversations[before] if len(self._bot.conversations) > before else None
        if bot is not None:
            try:
                await asyncio.wait_for(bot.ended.wait(), CONVERSATION_END_SECS)
            except TimeoutError:
                log.warning("the bot's side of %s did not end in time", session)
        return result, bot

    def _scored(
        self,
        item: Loaded,
        scenario: EvalScriptScenario,
        outcome: EvalScriptResult,
        bot: Conversation | None,
        turn_started: dict[int, float],
        ears: HarnessEars | None,
    ) -> ScenarioResult:
        if outcome.skipped:
            return self._result(item, "script", SKIPPED, note=outcome.skipped)
        windows = _turn_windows(turn_started, len(scenario.turns))
        turns = []
        for record in outcome.turns:
            since, until = windows.get(record.turn_index, (0.0, 0.0))
            turn = scenario.turns[record.turn_index]
            latencies = bot.of(ev.LatencyMeasured, since, until) if bot else []
            turns.append(
                TurnRecord(
                    index=record.turn_index,
                    user=turn.user or turn.dtmf or "",
                    status=record.status,
                    bot_said=_bot_words(bot, since, until) if bot else "",
                    answered=bool(bot and bot.of(ev.BotStartedSpeaking, since, until)),
                    v2v=[round(e.seconds, 3) for e in latencies],
                    heard_minus_server=_heard_minus_server(bot, ears, since, until),
                )
            )
        failed, not_judged = [], []
        for f in outcome.failures:
            words = turns[f.turn_index].bot_said if 0 <= f.turn_index < len(turns) else ""
            expect = _expectation(scenario, f.turn_index, f.expectation_index)
            failure = Failure(
                f.turn_index,
                f.expectation_index,
                describe(expect, f.event_name),
                f.kind,
                f.reason,
                words,
            )
            (not_judged if f.kind == "no_judge" else failed).append(failure)
        if outcome.passed:
            verdict = PASSED
        elif failed:
            verdict = FAILED
        else:
            verdict = NOT_JUDGED
        result = self._result(
            item, "script", verdict, failed=failed, not_judged=not_judged, turns=turns
        )
        self._add_bot_side(result, bot)
        return result

    def _add_bot_side(self, result: ScenarioResult, bot: Conversation | None) -> None:
        """What the bot's side adds: its errors, the tools it ran, the usage and its price."""
        if bot is None:
            result.errors.append("the bot never saw this conversation")
            return
        if bot.error:
            result.errors.append(bot.error)
        result.errors += [e.message for e in bot.of(ev.ErrorReported)]
        result.tools = [
            {"name": e.name, "ok": e.ok, "result": e.result} for e in bot.of(ev.ToolCallFinished)
        ]
        usage = pricing.Usage()
        for amount in bot.of(ev.UsageAmount):
            if amount.measure in pricing.MEASURES:
                usage = usage + pricing.Usage(**{amount.measure: amount.amount})
        result.usage = asdict(usage)
        stack = {stage: choice.label for stage, choice in bot.config.choices().items()}
        result.cost_usd = pricing.cost_of(usage, stack)


def _expectation(scenario: EvalScriptScenario, turn: int, index: int) -> EvalExpectation | None:
    if 0 <= turn < len(scenario.turns) and 0 <= index < len(scenario.turns[turn].expect):
        return scenario.turns[turn].expect[index]
    return None


def _turn_windows(started: dict[int, float], count: int) -> dict[int, tuple[float, float]]:
    """Each turn's wall-clock stretch: from its send (the first: from the start) to the next."""
    times = [started.get(i) for i in range(count)]
    windows = {}
    for i, start in enumerate(times):
        if start is None:
            continue
        later = [t for t in times[i + 1 :] if t is not None]
        windows[i] = (0.0 if i == 0 else start, later[0] if later else float("inf"))
    return windows


def _bot_words(bot: Conversation, since: float, until: float) -> str:
    """What the bot said in replies it started in a turn (an interrupted one as far as heard).

    A reply's text is reported when it ends, which for a reply the next turn
    talked over is after that turn began: it belongs where it started.
    """
    starts = [e.t for e in bot.of(ev.BotStartedSpeaking)]

    def started(event: ev.Event) -> float:
        return max((t for t in starts if t <= event.t), default=event.t)

    said = " ".join(
        e.text for e in bot.of(ev.BotTurnText) if e.text.strip() and since <= started(e) < until
    )
    if not said:  # nothing reached the speaker: what the LLM wrote
        said = "".join(e.text for e in bot.of(ev.BotToken, since, until)).strip()
    said = " ".join(said.split())
    return said if len(said) <= MAX_WORDS_CHARS else said[: MAX_WORDS_CHARS - 3] + "..."


def _heard_minus_server(
    bot: Conversation | None, ears: HarnessEars | None, since: float, until: float
) -> list[float]:
    """Per reply in the turn: when the harness first heard it, minus when the bot started it."""
    if bot is None or ears is None:
        return []
    gaps = []
    for started in bot.of(ev.BotStartedSpeaking, since, until):
        heard = [t for t in ears.onsets if started.t <= t < started.t + 2.0]
        if heard:
            gaps.append(round(heard[0] - started.t, 3))
    return gaps
