"""``python -m bench abuse``: one address attacks ``python app.py``; a visitor is answered too.

Each attack of :mod:`testkit.attacks` runs against one app (two slots, the
attack settings of :func:`testkit.attacks.abuse_environment`), with a visitor
from another address during it where the attack lasts, and another after it.
Per attack it prints what was tried, what the server answered the attacker,
what the visitors got (answered, voice-to-voice as heard), the app's resident
memory and threads before, right after the attack, and once the visitor after
it has left (3 s later: a closed connection is collected 2 s after its close),
and the tracebacks it logged.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from testkit import attacks
from testkit.attacks import Target

# A closed connection is collected 2 s after its clean-up (ui.webrtc_guard).
SETTLE_SECS = 3.0


async def _during(attack: AbstractAsyncContextManager[dict], visit: Awaitable[dict]) -> dict:
    """``visit`` while ``attack`` lasts."""
    async with attack as result:
        during = await visit
    return {"attack": result, "during": during}


async def _once(attack: Awaitable[dict]) -> dict:
    return {"attack": await attack}


async def _lockout(target: Target) -> dict:
    record = await _during(attacks.lockout_offers(target), attacks.visitor(target))
    async with attacks.stuck_handshakes(target) as held:
        # Every slot is held: the visitor presses Record until let in.
        waiting = await attacks.visitor(target, retry_for=attacks.ADMISSION_SECS + 5)
    return {**record, "held": held, "waiting": waiting}


async def _uploads(target: Target) -> dict:
    record = await _during(attacks.upload_flood(target), attacks.visitor_replay(target))
    return {**record, "after_replay": await attacks.visitor_replay(target)}


SCENARIOS: dict[str, Callable[[Target], Awaitable[dict]]] = {
    "lockout": _lockout,
    "audio-sections": lambda t: _once(attacks.many_audio_sections(t)),
    "server-key": lambda t: _once(attacks.server_key_reconnects(t)),
    "uploads": _uploads,
    "upload-cache": lambda t: _once(attacks.fill_upload_cache(t)),
    "spoofed-address": lambda t: _during(attacks.spoofed_connections(t), attacks.visitor(t)),
    "offer-flood": lambda t: _once(attacks.offer_flood(t)),
    "queue": lambda t: _during(attacks.queue_flood(t), attacks.visitor_queued(t)),
    "hostile-requests": lambda t: _during(attacks.hostile_requests(t), attacks.visitor(t)),
    "tool-arguments": lambda t: _once(attacks.non_object_tool_arguments(t)),
}


async def run_abuse(only: list[str] | None = None) -> dict:
    """Every scenario (or ``only`` these), each followed by a visitor; the figures per attack."""
    load_before = os.getloadavg()
    results = []
    async with attacks.abuse_target() as target:
        for name, scenario in SCENARIOS.items():
            if only and name not in only:
                continue
            before, offset, started = target.figures(), target.app.log_size(), time.monotonic()
            record: dict[str, Any] = {"name": name, **await scenario(target)}
            record["app_after_attack"] = target.figures()
            record["after"] = await attacks.visitor(target)
            record["seconds"] = time.monotonic() - started
            await asyncio.sleep(SETTLE_SECS)
            record["app_before"], record["app_after"] = before, target.figures()
            record["tracebacks"] = target.log_tracebacks(offset)
            results.append(record)
            print(format_attack(record), flush=True)
        log = str(target.app.log_path)
    return {
        "attacks": results,
        "app_log": log,
        "machine": {
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "cpus": os.cpu_count(),
        },
    }


def _visitor(seen: dict | None) -> str:
    if not seen:
        return "-"
    if "replayed" in seen:
        left = ", its file left in the cache" if seen.get("file_left") else ""
        return (
            f"replayed{left}"
            if seen["replayed"]
            else f"not replayed (upload {seen.get('upload_status')})"
        )
    if "seconds" in seen and "voice_to_voice" not in seen:
        return f"answered in {seen['seconds']:.1f} s" if seen["answered"] else "refused"
    if not seen.get("answered"):
        refusals = seen.get("refusals") or []
        return f"NOT answered ({refusals[-1] if refusals else seen.get('error')})"
    refused = len(seen.get("refusals") or [])
    admitted = (
        f" after {refused} refusal{'s' if refused > 1 else ''} "
        f"({seen['admitted_after']:.1f} s of pressing Record)"
        if refused
        else ""
    )
    return f"answered{admitted}, V2V {seen['voice_to_voice']:.2f} s"


def _server(name: str, record: dict) -> str:
    attack = record["attack"]
    if name == "lockout":
        held = record["held"]
        return (
            f"{attack['answered']} of {attack['offers']} bad offers answered "
            f"(refused: {dict(attack['refusals'])}); {held['answered']} wrong-fingerprint "
            f"offers answered, each closed once its handshake stalled"
        )
    if name == "audio-sections":
        return "answered" if attack["answered"] else f"refused ({attack['error']})"
    if name == "server-key":
        parts = [
            f"{page}: {'answered' if seen['answered'] else 'NOT answered'}, "
            f"{seen['server_key_calls']} calls on the server's key"
            f"{', told it was used up' if seen['used_up_shown'] else ''}"
            for page, seen in ((p, attack[p]) for p in ("same page", "new page"))
        ]
        return f"budget spent: {attack.get('spent')}; " + "; ".join(parts)
    if name in ("uploads", "upload-cache"):
        cache = attack.get("cache_mb_after", attack.get("cache_mb"))
        return f"statuses {dict(attack['statuses'])}, upload cache {cache:.0f} MB"
    if name == "spoofed-address":
        return f"{attack['admitted']} admitted, refused: {attack['refusals']}"
    if name == "offer-flood":
        return f"refused: {dict(attack['refusals'])}"
    if name == "queue":
        return f"statuses {dict(attack['statuses'])}"
    if name == "hostile-requests":
        return (
            f"{attack['requests']} requests: {dict(attack['statuses'])}; "
            f"/openapi.json {attack.get('/openapi.json')}"
        )
    if name == "tool-arguments":
        return (
            f"tool cards {attack['tool_cards']}, apology spoken: {attack['apology_spoken']}, "
            f"visitor {_visitor(attack)}"
        )
    return str(attack)


def format_attack(record: dict) -> str:
    name = record["name"]
    before, after = record["app_before"], record["app_after"]
    lines = [
        f"[{name}] {record['attack']['tried']}",
        f"    server: {_server(name, record)}",
    ]
    for when in ("during", "waiting", "after_replay", "after"):
        if when in record:
            lines.append(f"    visitor {when.replace('_', ' ')}: {_visitor(record[when])}")
    attacked = record["app_after_attack"]
    lines.append(
        f"    app RSS {before['rss_mb']:.0f} -> {attacked['rss_mb']:.0f} MB after the attack, "
        f"{after['rss_mb']:.0f} MB after the last visitor; threads {before['threads']} -> "
        f"{attacked['threads']} -> {after['threads']}; tracebacks logged {record['tracebacks']}"
    )
    return "\n".join(lines)
