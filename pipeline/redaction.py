"""Keeps API keys out of every log line, at every level, from either logging system.

A key is masked as ``***`` when it is

* **known**: the server's keys and every key a visitor typed, registered with
  :func:`remember` (every :class:`pipeline.providers.ProviderKeys` does so when
  it is made). The most recent :data:`MAX_KNOWN_KEYS` are kept;
* **credential-shaped**: a value after ``Authorization: Bearer``, a header or
  parameter named like an API key (``xi-api-key: ...``, ``api_key=...``,
  ``'x-api-key': '...'``, ``(b'xi-api-key', b'...')``), or a token shaped like
  Groq's (``gsk_...``), ElevenLabs' (``sk_...``) or OpenAI's (``sk-...``) keys.

:func:`install` hooks both logging systems (see its docstring for where and
why). It is cheap enough for pipecat's per-frame DEBUG lines: ~2 us for a
line with nothing to mask. Known keys are found by their first characters
in one precompiled, trie-shaped pattern (its cost does not grow with the
number of keys; keys remembered since it was compiled are compared one by
one), and the credential shapes are searched for only in a line holding one
of their clues ("bearer", "api", "sk_"...).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loguru import Record  # a type of loguru's stubs only

MASK = "***"
# Typed keys remembered (oldest forgotten first): a bound on memory and on the
# size of the pattern, far above the keys a Space sees in a day.
MAX_KNOWN_KEYS = 4096
# Shorter strings are not keys any provider issues; masking them would garble
# ordinary words in the log (a visitor could type "a").
MIN_KEY_LENGTH = 8
# Known keys are found by this many leading characters, then compared whole.
PREFIX_LENGTH = 12
# Keys remembered since the pattern was last compiled are compared one by one;
# past this many, the pattern is recompiled, on a thread of its own.
MAX_PENDING_KEYS = 32

_VALUE = r"[^\s'\",;&)\]}>]+"
_CREDENTIAL = re.compile(
    # "Bearer <token>": the scheme stays, the credential goes.
    r"(?P<scheme>\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    # A key-like name, a separator (": ", "=", "': '", "\": \"", "', b'"), a value.
    r"|(?P<name>\b(?:(?:xi|x)[-_])?api[-_]?key|\bauthorization|\b(?:access|auth|api)[-_]token"
    r"|\bclient[-_]secret|\bpassword)"
    r"(?P<sep>['\"]?\s*(?:[:=]|,(?=\s*b?['\"]))\s*(?:(?-i:b)?['\"])?\s*(?:(?:bearer|basic)\s+)?)"
    rf"(?!\*\*\*){_VALUE}"
    # Tokens shaped like the providers' keys.
    r"|\b(?:gsk|sk|hf)_[A-Za-z0-9]{16,}|\bsk-[A-Za-z0-9_-]{16,}",
    re.IGNORECASE,
)

# Every match of ``_CREDENTIAL`` contains one of these, lowercased.
_CLUES = ("bearer", "api", "auth", "token", "secret", "password", "sk_", "sk-", "hf_")


def _mask_credential(match: re.Match) -> str:
    if match.group("scheme"):
        return match.group("scheme") + MASK
    if match.group("name"):
        return match.group("name") + match.group("sep") + MASK
    return MASK


@dataclass(frozen=True)
class _Known:
    """An immutable view of the known keys: readers never lock, writers swap the whole view."""

    pattern: re.Pattern | None = None
    by_prefix: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Keys not in ``pattern`` yet, by prefix.
    pending: dict[str, tuple[str, ...]] = field(default_factory=dict)


_lock = threading.Lock()
_keys: OrderedDict[str, None] = OrderedDict()
_compiled: frozenset[str] = frozenset()  # the keys in ``_known.pattern``
_compiling = False
_known = _Known()


def remember(*keys: str | None) -> None:
    """Mask these keys in every log line from now on (empty and short ones are ignored)."""
    global _known, _compiling
    fresh = [k.strip() for k in keys if k and len(k.strip()) >= MIN_KEY_LENGTH]
    if not fresh:
        return
    with _lock:
        added = False
        for key in fresh:
            if key in _keys:
                _keys.move_to_end(key)
            else:
                _keys[key] = None
                added = True
        while len(_keys) > MAX_KNOWN_KEYS:
            _keys.popitem(last=False)
        if not added:
            return
        pending = [k for k in _keys if k not in _compiled]
        _known = _Known(_known.pattern, _known.by_prefix, _by_prefix(pending))
        if len(pending) > MAX_PENDING_KEYS and not _compiling:
            # ~0.1-0.2 s for thousands of keys: not in the caller's thread, which
            # may be the event loop that paces everybody's audio.
            _compiling = True
            threading.Thread(target=compile_pattern, name="redaction", daemon=True).start()


def compile_pattern() -> None:
    """Put every remembered key in the pattern (the pending ones were checked one by one)."""
    global _known, _compiled, _compiling
    with _lock:
        keys = tuple(_keys)
    by_prefix = _by_prefix(keys)
    pattern = re.compile(_trie_pattern(by_prefix)) if by_prefix else None
    with _lock:
        _compiled = frozenset(keys)
        _known = _Known(pattern, by_prefix, _by_prefix(k for k in _keys if k not in _compiled))
        _compiling = False


def _by_prefix(keys: Iterable[str]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(key[:PREFIX_LENGTH], []).append(key)
    return {prefix: tuple(found) for prefix, found in grouped.items()}


def _trie_pattern(words: Iterable[str]) -> str:
    """An alternation of ``words`` shaped as a trie: one branch per next character.

    ``re`` tries the alternatives of a flat ``a|b|c`` one after another at
    every position; shaped as a trie, a position that starts no word fails
    at its first character.
    """
    trie: dict = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def branch(node: dict) -> str:
        ends = "" in node
        alternatives = [re.escape(c) + branch(child) for c, child in sorted(node.items()) if c]
        if not alternatives:
            return ""
        if len(alternatives) == 1 and not ends:
            return alternatives[0]
        group = "(?:" + "|".join(alternatives) + ")"
        return group + "?" if ends else group

    return branch(trie)


def _mask_known(text: str, known: _Known) -> str:
    for prefix in known.pending:
        if prefix in text:
            text = _mask_found(text, re.compile(re.escape(prefix)), known)
    if known.pattern is not None and known.pattern.search(text) is not None:
        text = _mask_found(text, known.pattern, known)
    return text


def _mask_found(text: str, pattern: re.Pattern, known: _Known) -> str:
    """Mask each key ``pattern`` finds by its prefix, or as much of it as the text holds.

    A library may print a key cut short ("sk_1234abcd..."): what is there of
    it is masked, not only a whole key.
    """
    parts: list[str] = []
    done = 0
    match = pattern.search(text)
    while match is not None:
        start, prefix = match.start(), match.group()
        # Pending and compiled keys may share a prefix: all are candidates.
        candidates = known.pending.get(prefix, ()) + known.by_prefix.get(prefix, ())
        length = max((_common_prefix(text, start, k) for k in candidates), default=0)
        parts += (text[done:start], MASK)
        done = start + max(length, len(prefix))
        match = pattern.search(text, done)
    return "".join(parts) + text[done:]


def _common_prefix(text: str, start: int, key: str) -> int:
    if text.startswith(key, start):
        return len(key)
    length = 0
    for a, b in zip(text[start : start + len(key)], key, strict=False):
        if a != b:
            break
        length += 1
    return length


def redact(text: str) -> str:
    """``text`` with every known key and every credential-shaped value masked."""
    text = _mask_known(text, _known)
    lowered = text.lower()
    # Searching for the credential shapes costs ~10 us a line; these plain
    # substring checks (one of them is in every shape) ~1 us.
    if not any(clue in lowered for clue in _CLUES):
        return text
    return _CREDENTIAL.sub(_mask_credential, text)


# --------------------------------------------------------------------------- the standard library

_TRACEBACKS = logging.Formatter()


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask keys in ``record``'s message (formatted with its args), traceback and stack.

    The message is formatted here, once, to be searched; only when something
    was masked are ``msg`` and ``args`` replaced by the masked text (a
    formatter that reads ``args`` itself, as uvicorn's access log does, keeps
    them otherwise). A traceback with a key in it is kept as masked text only.
    """
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit the format: keep both, as text
        try:
            message = f"{record.msg} (arguments: {record.args!r})"
        except Exception:
            message = "(a log message that could not be formatted)"
        record.msg, record.args = redact(message), ()
    else:
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = record.exc_text or _TRACEBACKS.formatException(record.exc_info)
        masked = redact(text)
        if masked != text:
            record.exc_text, record.exc_info = masked, None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingStream:
    """A text stream masking keys in what is written through it.

    Both logging systems write one whole record (traceback included) per
    ``write``, so a key is never split between two writes. Serves as a
    ``logging.StreamHandler``'s stream and as a loguru sink alike.
    """

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())


def _redacting_factory(previous):
    def make_record(*args, **kwargs) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    make_record.redacts = True  # type: ignore[attr-defined]
    return make_record


# --------------------------------------------------------------------------- loguru


def _redact_loguru_record(record: Record) -> None:
    """Mask the message, and the exception: sinks render it from the live objects.

    An exception whose traceback holds a key is handed to the sinks as
    masked text in the message instead.
    """
    record["message"] = redact(record["message"])
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        text = "".join(traceback.format_exception(*exception))
        masked = redact(text)
        if masked != text:
            record["message"] += "\n" + masked.rstrip("\n")
            record["exception"] = None


def install() -> None:
    """Mask keys in every record either logging system makes from now on (idempotent).

    Where, and why there:

    * ``logging.setLogRecordFactory``: every standard-library record is made
      by the factory before any filter or handler sees it, so the mask holds
      for every handler, including ones a library adds later on its own
      logger (uvicorn does) or pytest's, and for records that never reach the
      root logger. A filter on the root logger's handlers would miss those.
    * loguru's patcher (``logger.configure(patcher=...)``): runs on every
      record's message before any sink, for sinks added later too.
    * The app's own sinks write through a :class:`RedactingStream` (see
      :func:`pipeline.runtime.configure_logging`), which masks the finished
      line once more: a formatter can add what the record's message did not
      hold (the traceback loguru renders, a field from ``extra``), and a key
      remembered between a record's making and its writing is masked too.
    """
    from loguru import logger

    if not getattr(logging.getLogRecordFactory(), "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(logging.getLogRecordFactory()))
    logger.configure(patcher=_redact_loguru_record)
