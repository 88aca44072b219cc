"""Provider failures in plain words: who failed, what it means, what to do.

Services report failures differently (an SDK exception, a websocket close, a
bare message such as "Unknown error occurred: Error code: 401 ..."), so the
HTTP status is read from whichever of them carries it.
"""

from __future__ import annotations

import re

_STATUS_IN_TEXT = re.compile(
    r"(?:error code|status(?: code)?|http)[:= ]+(\d{3})|\b(401|403|429|5\d\d)\b", re.I
)
_TIMEOUT_WORDS = ("timed out", "timeout", "hang")
_UNREACHABLE_WORDS = (
    "connect",
    "refused",
    "unreachable",
    "name or service",
    "closed",
    "disconnected",
    "1006",
    "reset by peer",
)


def status_of(exception: BaseException | None, message: str) -> int | None:
    """The HTTP status behind a failure, if any part of it says."""
    for candidate in (exception, getattr(exception, "response", None)):
        for attribute in ("status_code", "status"):
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    found = _STATUS_IN_TEXT.search(f"{message} {exception or ''}")
    if found:
        return int(found.group(1) or found.group(2))
    return None


def describe_failure(provider: str, exception: BaseException | None, message: str) -> str:
    """One or two sentences a visitor can act on, naming the provider."""
    status = status_of(exception, message)
    text = f"{message} {exception or ''}".lower()
    if status in (401, 403) or "api key" in text or "unauthorized" in text:
        return (
            f"{provider} refused the API key ({status or 'unauthorized'}). Check the key, "
            "or pick another provider: the change applies from your next turn."
        )
    if status == 429 or "rate limit" in text or "quota" in text:
        return (
            f"{provider} is rate-limiting this key (429). Wait a few seconds and speak "
            "again, or switch provider."
        )
    if status is not None and status >= 500:
        return (
            f"{provider} had a server error ({status}); this turn was dropped. "
            "Speak again, or switch provider if it keeps failing."
        )
    if "completed with no audio" in text:
        return (
            f"{provider} sent no audio for the reply (its connection dropped or it did not "
            "answer in time). Speak again, or switch provider."
        )
    if any(word in text for word in _TIMEOUT_WORDS):
        return (
            f"{provider} did not answer in time; this turn was dropped. "
            "Speak again, or switch provider."
        )
    if any(word in text for word in _UNREACHABLE_WORDS):
        return (
            f"Could not reach {provider} (connection failed or dropped); this turn was "
            "dropped. Check the network, or switch provider."
        )
    return f"{provider} failed: {message}"
