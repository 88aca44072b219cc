"""aiortc's and aioice's internals we rely on: patches, process-wide and idempotent.

Each patch marks the patched class or module with a ``_voice_lab_*`` attribute
of ours, so installing it twice is harmless.
"""

from __future__ import annotations

import functools
import ipaddress

from pipeline.compat import Reliance

CONTRACT = [
    Reliance(
        "aiortc",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver",
        "_RTCRtpReceiver__jitter_buffer",
        "the audio jitter buffer is rebuilt with prefetch=1 (aiortc holds 4 frames): "
        "the pipeline hears the user 60 ms sooner",
        "a jitter-buffer parameter on RTCRtpReceiver (or RTCConfiguration)",
        on_instance=True,
    ),
    Reliance(
        "aiortc",
        "aiortc.rtcrtpreceiver.RTCRtpReceiver",
        "__init__",
        "wrapped to replace the jitter buffer it builds",
        "as above",
        params=("self", "kind", "transport"),
    ),
    Reliance(
        "aiortc",
        "aiortc.jitterbuffer.JitterBuffer",
        "__init__",
        "the audio jitter buffer we build in its place",
        "as above",
        params=("self", "capacity", "prefetch", "is_video"),
    ),
    Reliance(
        "aioice",
        "aioice.ice",
        "get_host_addresses",
        "replaced in tests and CI: aioice never offers 127.0.0.1, and their traffic must stay "
        "on loopback",
        "a host-address filter option on aioice's Connection",
        params=("use_ipv4", "use_ipv6"),
    ),
    Reliance(
        "aioice",
        "aioice.ice.Connection",
        "add_remote_candidate",
        "wrapped in tests and CI: the browser's non-loopback candidates are ignored",
        "as above",
        params=("self", "remote_candidate"),
    ),
    Reliance(
        "aioice",
        "aioice.ice.Connection",
        "request_received",
        "wrapped in tests and CI: checks from non-loopback addresses are ignored",
        "as above",
        params=("self", "message", "addr", "protocol"),
    ),
]


def tighten_audio_jitter_buffer(prefetch: int = 1) -> None:
    """Hand the pipeline each browser audio frame as soon as it is complete.

    aiortc's receiver keeps 4 audio frames in its jitter buffer before it
    releases one (``JitterBuffer(capacity=16, prefetch=4)``), so the server
    heard the user 80 ms late: every turn's end, and every barge-in, was
    detected that much later than it could be. The buffer releases frames in
    order and waits for a missing packet whatever the prefetch, so prefetching
    protects nothing for single-packet Opus frames; one frame (the next
    packet's arrival proves the previous frame complete) is the minimum.
    Process-wide and idempotent.
    """
    from aiortc.jitterbuffer import JitterBuffer
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    if getattr(RTCRtpReceiver, "_voice_lab_prefetch", None) == prefetch:
        return
    original = getattr(RTCRtpReceiver, "_voice_lab_original_init", RTCRtpReceiver.__init__)

    @functools.wraps(original)
    def __init__(self, kind, transport):
        original(self, kind, transport)
        if kind == "audio":
            self._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=prefetch)

    RTCRtpReceiver._voice_lab_original_init = original  # type: ignore[attr-defined]
    RTCRtpReceiver._voice_lab_prefetch = prefetch  # type: ignore[attr-defined]
    RTCRtpReceiver.__init__ = __init__  # type: ignore[method-assign]


def restrict_ice_to_loopback() -> None:
    """Make aiortc offer and accept only 127.0.0.1 ICE candidates.

    aioice never offers loopback addresses, so a browser on the same machine
    would be reached through the machine's LAN address. Tests, the benchmark
    and CI must not send traffic anywhere but 127.0.0.1, so with
    ``VOICE_LAB_LOOPBACK_ICE=1`` the server offers 127.0.0.1 and ignores the
    browser's other candidates. Never needed in production.
    """
    import aioice.ice

    if getattr(aioice.ice, "_voice_lab_loopback", False):
        return

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    original_add = aioice.ice.Connection.add_remote_candidate

    @functools.wraps(original_add)
    async def add_loopback_candidate(self, candidate):
        if candidate is not None and not _is_loopback(candidate.host):
            return
        await original_add(self, candidate)

    original_request = aioice.ice.Connection.request_received

    @functools.wraps(original_request)
    def loopback_request_received(self, message, addr, protocol):
        # A check from the browser's LAN address would otherwise be learnt as
        # a peer-reflexive candidate and answered.
        if _is_loopback(addr[0]):
            original_request(self, message, addr, protocol)

    aioice.ice.get_host_addresses = loopback_only
    aioice.ice.Connection.add_remote_candidate = add_loopback_candidate  # type: ignore[method-assign,assignment]
    aioice.ice.Connection.request_received = loopback_request_received  # type: ignore[method-assign]
    aioice.ice._voice_lab_loopback = True  # type: ignore[attr-defined]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an mDNS name such as 1234.local
        return False
