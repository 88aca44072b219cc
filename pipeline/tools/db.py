"""The demo tools' database: SQLite from the standard library, in memory, one copy per session.

A template is created and seeded once (at start-up, and again on the first
session of a new day, since the seeded dates are relative to today); every
session gets its own copy (``sqlite3`` backup, well under a millisecond), so a
visitor who cancels an order never sees, or changes, anybody else's orders.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading

SCHEMA = """
CREATE TABLE orders (
    number TEXT PRIMARY KEY,
    item TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('processing', 'shipped', 'delivered', 'cancelled')),
    carrier TEXT,
    -- ISO dates: when it ships (processing) or shipped, and when it arrives or arrived.
    ship_date TEXT NOT NULL,
    delivery_date TEXT NOT NULL,
    delivery_window TEXT NOT NULL CHECK (delivery_window IN ('morning', 'afternoon', 'evening')),
    price_pounds INTEGER NOT NULL
);
-- Every change a tool made, by the tool call that made it: a call is applied at most once.
CREATE TABLE actions (
    tool_call_id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    order_number TEXT NOT NULL REFERENCES orders (number),
    fact TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE cities (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    time_zone TEXT NOT NULL
);
"""

# (number, item, status, carrier, ship day, delivery day, window, price), days from today.
ORDERS = (
    ("1234", "wireless headphones", "shipped", "Parcelforce", -1, 1, "afternoon", 89),
    ("4821", "standing desk", "processing", None, 2, 5, "morning", 249),
    ("7777", "coffee grinder", "delivered", "Royal Mail", -4, -1, "morning", 45),
    ("5150", "running shoes", "processing", None, 1, 3, "evening", 120),
    ("3690", "garden chair", "cancelled", None, 0, 0, "morning", 60),
)
CITIES = (
    ("London", "Europe/London"),
    ("Paris", "Europe/Paris"),
    ("Berlin", "Europe/Berlin"),
    ("Madrid", "Europe/Madrid"),
    ("Rome", "Europe/Rome"),
    ("New York", "America/New_York"),
    ("Chicago", "America/Chicago"),
    ("Denver", "America/Denver"),
    ("Los Angeles", "America/Los_Angeles"),
    ("San Francisco", "America/Los_Angeles"),
    ("Toronto", "America/Toronto"),
    ("Mexico City", "America/Mexico_City"),
    ("Sao Paulo", "America/Sao_Paulo"),
    ("Tokyo", "Asia/Tokyo"),
    ("Seoul", "Asia/Seoul"),
    ("Beijing", "Asia/Shanghai"),
    ("Shanghai", "Asia/Shanghai"),
    ("Singapore", "Asia/Singapore"),
    ("Mumbai", "Asia/Kolkata"),
    ("Delhi", "Asia/Kolkata"),
    ("Dubai", "Asia/Dubai"),
    ("Sydney", "Australia/Sydney"),
    ("Auckland", "Pacific/Auckland"),
    ("Cairo", "Africa/Cairo"),
    ("Nairobi", "Africa/Nairobi"),
)

_lock = threading.Lock()
_template: tuple[dt.date, sqlite3.Connection] | None = None


def _connect() -> sqlite3.Connection:
    # Built on the switcher's worker thread, used on the event loop's: one
    # connection, never used by two threads at once.
    connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def seed(connection: sqlite3.Connection, today: dt.date) -> None:
    """Create the tables and the demo rows, with dates relative to ``today``."""
    connection.executescript(SCHEMA)

    def day(offset: int) -> str:
        return (today + dt.timedelta(days=offset)).isoformat()

    connection.executemany(
        "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (number, item, status, carrier, day(ship), day(arrive), window, price)
            for number, item, status, carrier, ship, arrive, window, price in ORDERS
        ],
    )
    connection.executemany("INSERT INTO cities VALUES (?, ?)", CITIES)


def template(today: dt.date | None = None) -> sqlite3.Connection:
    """The seeded template for ``today`` (made once per day; start-up makes the first)."""
    global _template
    today = today or dt.date.today()
    with _lock:
        if _template is None or _template[0] != today:
            connection = _connect()
            seed(connection, today)
            _template = (today, connection)
        return _template[1]


def session_database(today: dt.date | None = None) -> sqlite3.Connection:
    """A fresh copy of the seeded data for one session."""
    source = template(today)
    copy = _connect()
    with _lock:
        source.backup(copy)
    return copy
