"""Speak the first clause of a reply as soon as it is complete.

A TTS service waits for a whole sentence before it synthesises anything, and a
long first sentence is paid twice before the user hears a word: once while the
LLM writes it, once while the TTS renders it. Cutting the *first* sentence at a
clause boundary (a comma, semicolon or colon after a few words) lets the audio
start sooner; the rest of the reply is still spoken sentence by sentence, so
prosody only changes at that one joint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from pipecat.processors.aggregators.llm_text_processor import LLMTextProcessor
from pipecat.utils.text.base_text_aggregator import Aggregation, TextType
from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

CLAUSE_ENDINGS = (",", ";", ":")


class FirstClauseAggregator(SimpleTextAggregator):
    """Sentence aggregation, except the reply's first chunk may end at a clause."""

    def __init__(self, min_words: int = 5, **kwargs):
        super().__init__(**kwargs)
        self._min_words = min_words
        self._first_sent = False

    async def aggregate(self, text: str) -> AsyncIterator[Aggregation]:
        # A clause ends where punctuation is followed by a space: "1,000" and
        # "3:30" arrive as separate tokens but are not clause boundaries.
        pending = self.text.text.strip()
        if (
            not self._first_sent
            and text[:1].isspace()
            and pending.endswith(CLAUSE_ENDINGS)
            and len(pending.split()) >= self._min_words
        ):
            self._first_sent = True
            await super().reset()
            yield Aggregation(text=pending, type=TextType.SENTENCE)
        async for aggregation in super().aggregate(text):
            self._first_sent = True
            yield aggregation

    async def flush(self) -> Aggregation | None:
        self._first_sent = False
        return await super().flush()

    async def handle_interruption(self):
        self._first_sent = False
        await super().handle_interruption()

    async def reset(self):
        self._first_sent = False
        await super().reset()


def first_clause_chunker() -> LLMTextProcessor:
    """The processor to put between the LLM and the TTS."""
    return LLMTextProcessor(text_aggregator=FirstClauseAggregator())
