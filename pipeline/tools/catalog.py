"""The demo tools: what the LLM is told about each, and what each does with the session's database.

Every tool answers with a short *speakable fact* ("Order 1234, the wireless
headphones, has shipped and should arrive tomorrow afternoon."), never a status
code and an ISO timestamp: the LLM passes the result on aloud, and a fact already
phrased for the ear is what it repeats best. A tool that cannot do what was asked
raises :class:`ToolRefusal` with the sentence to say instead.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NUMBER_WORDS = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}


# The LLM writes the arguments, and a visitor can talk it into anything: what a
# refusal repeats back stays short.
MAX_ORDER_DIGITS = 12
MAX_CITY_CHARS = 60


class ToolRefusal(Exception):
    """The tool ran but could not do what was asked; the message is the sentence to say."""


@dataclass(frozen=True)
class Tool:
    """One tool: its schema for the LLM, what it runs, and how it behaves in a conversation.

    ``changes_data``: the tool is not idempotent. It is never cancelled half-way
    by a barge-in (pipecat's ``cancel_on_interruption=False``), and it records
    each change under its tool call id, so a call is applied exactly once.
    """

    schema: FunctionSchema
    # (session database, arguments, tool call id, now) -> the speakable fact
    run: Callable[[sqlite3.Connection, Mapping, str, dt.datetime], str]
    changes_data: bool
    # Said while the tool works, once it has taken longer than the threshold.
    waiting_phrase: str
    # Said when the tool failed or timed out.
    apology: str

    @property
    def name(self) -> str:
        return self.schema.name


def order_number(raw: object) -> str:
    """The digits of an order number as a listener would give it ("12 34", "one two three four")."""
    text = str(raw or "").lower()
    for word, digit in NUMBER_WORDS.items():
        text = re.sub(rf"\b{word}\b", digit, text)
    return re.sub(r"\D", "", text)


def spoken_day(day: dt.date, today: dt.date) -> str:
    offset = (day - today).days
    if offset == 0:
        return "today"
    if offset == 1:
        return "tomorrow"
    if offset == -1:
        return "yesterday"
    if 1 < offset < 7:
        return f"on {WEEKDAYS[day.weekday()]}"
    if -7 < offset < -1:
        return f"last {WEEKDAYS[day.weekday()]}"
    return f"on {WEEKDAYS[day.weekday()]} the {_ordinal(day.day)} of {day.strftime('%B')}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def spoken_time(moment: dt.datetime) -> str:
    """ "4:35 in the afternoon", "9 o'clock in the morning", "midnight"."""
    if moment.hour == 0 and moment.minute == 0:
        return "midnight"
    if moment.hour == 12 and moment.minute == 0:
        return "midday"
    hour = moment.hour % 12 or 12
    clock = f"{hour} o'clock" if moment.minute == 0 else f"{hour}:{moment.minute:02d}"
    if moment.hour < 5:
        part = "at night"
    elif moment.hour < 12:
        part = "in the morning"
    elif moment.hour < 18:
        part = "in the afternoon"
    else:
        part = "in the evening" if moment.hour < 22 else "at night"
    return f"{clock} {part}"


def _find_order(db: sqlite3.Connection, raw: object) -> sqlite3.Row:
    number = order_number(raw)[:MAX_ORDER_DIGITS]
    if not number:
        raise ToolRefusal("I need the order number to look that up.")
    row = db.execute("SELECT * FROM orders WHERE number = ?", (number,)).fetchone()
    if row is None:
        raise ToolRefusal(f"I can't find an order number {' '.join(number)}: please check it.")
    return row


def lookup_order(db: sqlite3.Connection, args: Mapping, _call_id: str, now: dt.datetime) -> str:
    row = _find_order(db, args.get("order_number"))
    today = now.date()
    ships = spoken_day(dt.date.fromisoformat(row["ship_date"]), today)
    arrives = spoken_day(dt.date.fromisoformat(row["delivery_date"]), today)
    what = f"Order {row['number']}, the {row['item']},"
    match row["status"]:
        case "processing":
            return (
                f"{what} is being packed: it ships {ships} and should arrive "
                f"{arrives} {_window(row)}."
            )
        case "shipped":
            return (
                f"{what} shipped {ships} with {row['carrier']} and should arrive "
                f"{arrives} {_window(row)}."
            )
        case "delivered":
            return f"{what} was delivered {arrives} {_window(row)}."
    return f"{what} was cancelled, so nothing will be delivered."


def _window(row: sqlite3.Row) -> str:
    return "in the evening" if row["delivery_window"] == "evening" else row["delivery_window"]


def cancel_order(db: sqlite3.Connection, args: Mapping, call_id: str, now: dt.datetime) -> str:
    """Cancel an order not yet shipped: one transaction, recorded under the tool call id."""
    db.execute("BEGIN IMMEDIATE")
    try:
        done = db.execute("SELECT fact FROM actions WHERE tool_call_id = ?", (call_id,)).fetchone()
        if done is not None:  # this very call was applied already: say so again, change nothing
            db.execute("COMMIT")
            return done["fact"]
        row = _find_order(db, args.get("order_number"))
        if row["status"] != "processing":
            status = {"cancelled": "was already cancelled"}.get(
                row["status"], f"has already {row['status']}, so it can no longer be cancelled"
            )
            raise ToolRefusal(f"Order {row['number']}, the {row['item']}, {status}.")
        fact = (
            f"Order {row['number']}, the {row['item']}, is now cancelled: the refund of "
            f"{row['price_pounds']} pounds reaches your card within five working days."
        )
        db.execute("UPDATE orders SET status = 'cancelled' WHERE number = ?", (row["number"],))
        db.execute(
            "INSERT INTO actions VALUES (?, 'cancel', ?, ?, ?)",
            (call_id, row["number"], fact, now.isoformat(timespec="seconds")),
        )
        db.execute("COMMIT")
        return fact
    except BaseException:
        db.execute("ROLLBACK")
        raise


def time_in_city(db: sqlite3.Connection, args: Mapping, _call_id: str, now: dt.datetime) -> str:
    city = " ".join(str(args.get("city") or "").split()).strip(" .?!,")[:MAX_CITY_CHARS]
    if not city:
        raise ToolRefusal("Which city do you mean?")
    row = db.execute("SELECT name, time_zone FROM cities WHERE name = ?", (city,)).fetchone()
    if row is None:
        raise ToolRefusal(f"I don't know the time zone of {city}.")
    local = now.astimezone(ZoneInfo(row["time_zone"]))
    return f"In {row['name']} it is {spoken_time(local)}, on {WEEKDAYS[local.weekday()]}."


_ORDER_NUMBER = {
    "order_number": {
        "type": "string",
        "description": "The order number, digits only, e.g. 1234.",
    }
}

TOOLS: tuple[Tool, ...] = (
    Tool(
        schema=FunctionSchema(
            name="lookup_order",
            description="Look up an order's status and when it will be delivered.",
            properties=_ORDER_NUMBER,
            required=["order_number"],
        ),
        run=lookup_order,
        changes_data=False,
        waiting_phrase="Let me check that for you.",
        apology="Sorry, I couldn't reach the order system just now. Please try again in a moment.",
    ),
    Tool(
        schema=FunctionSchema(
            name="cancel_order",
            description=(
                "Cancel an order that has not shipped yet. Only call this when the user "
                "has clearly asked to cancel that order."
            ),
            properties=_ORDER_NUMBER,
            required=["order_number"],
        ),
        run=cancel_order,
        changes_data=True,
        waiting_phrase="One moment, I'm cancelling that for you.",
        apology="Sorry, I couldn't cancel that order just now. Nothing was changed.",
    ),
    Tool(
        schema=FunctionSchema(
            name="time_in_city",
            description="The current local time in a named city.",
            properties={"city": {"type": "string", "description": "The city, e.g. Tokyo."}},
            required=["city"],
        ),
        run=time_in_city,
        changes_data=False,
        waiting_phrase="Let me check the time there.",
        apology="Sorry, I couldn't look up the time just now.",
    ),
)

# Composed into the LLM's system instruction while tools are offered.
INSTRUCTIONS = (
    "You can look up orders, cancel an order that has not shipped, and tell the time in a "
    "city with your tools. A tool's result is a sentence written to be spoken: pass it on "
    "in your own short words, never as a list or code. If a tool says something went wrong, "
    "apologise and say what happened."
)


def schemas() -> list[dict]:
    """The tools as the LLM is told about them (OpenAI-style function definitions)."""
    return [{"type": "function", "function": tool.schema.to_default_dict()} for tool in TOOLS]
