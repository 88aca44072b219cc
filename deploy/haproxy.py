"""HAProxy's configuration for Voice Lab workers: sticky by cookie, full workers drained.

What a visitor needs from the balancer, and the HAProxy feature that gives it:

- **Every request of one page on one worker** (Gradio keeps the session and its
  queue in the process that served the page; fastrtc's offer and each trickled
  ICE candidate must reach the process that holds the peer connection):
  ``cookie ... insert``, HAProxy's own cookie naming the server, set on the
  first response and honoured on every request after it. Not the client's
  address: visitors behind one NAT would pile onto one worker, and a phone
  changing networks would lose its call.
- **A full worker gets no new visitors, its current ones stay**: each worker
  answers ``agent-check`` with ``drain`` when full (``ready N%`` otherwise, N its
  free share); a drained server still gets requests that carry its cookie.
  A failing HTTP check (``/health``) marks a dead worker down instead, and
  ``option redispatch`` sends its visitors' next requests (a page reload) to a
  live one.
- **Beyond the total capacity the app refuses politely**: with every worker
  drained, ``workers_full`` still serves the page from any live worker, whose
  offer handler answers with the app's own "try again later".
- **One address cannot flood the workers**: a per-source request rate
  (addresses grouped per /64 for IPv6) in a stick table, answered 429.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COOKIE = "VOICE_LAB_WORKER"
# Requests one source (an IPv4 address or an IPv6 /64) may make per 10 s. A page load is
# ~60 requests; a call adds a few per second.
RATE_LIMIT_PER_10S = 600
# Health and agent checks: a dead worker is out of rotation within two seconds, a full one
# stops getting new visitors within one.
CHECK_INTERVAL = "1s"

SERVICE_UNAVAILABLE = """HTTP/1.0 503 Service Unavailable
Cache-Control: no-cache
Connection: close
Content-Type: text/html; charset=utf-8

<!doctype html><html><head><title>Voice Lab</title></head><body style="font-family:sans-serif">
<h1>Voice Lab is starting or restarting</h1>
<p>No worker is answering right now. Try again in a minute.</p></body></html>
"""


@dataclass(frozen=True)
class Server:
    """One Voice Lab worker as the balancer sees it."""

    name: str
    host: str
    port: int
    agent_port: int | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def configuration(
    servers: list[Server],
    *,
    bind: str,
    run_dir: Path | None,
    cookie_attrs: tuple[str, ...] = (),
    rate_limit: int = RATE_LIMIT_PER_10S,
    log_requests: bool = False,
) -> str:
    """``haproxy.cfg`` for ``servers`` behind ``bind`` (host:port).

    With a ``run_dir`` (HAProxy run by the launcher) its stats socket and error
    page go there; without one the configuration is for an HAProxy of your own.
    """
    if run_dir is not None:
        (run_dir / "503.http").write_text(SERVICE_UNAVAILABLE.replace("\n", "\r\n", 5))
    attrs = "".join(f' attr "{attr}"' for attr in cookie_attrs)
    cookie = f"cookie {COOKIE} insert indirect nocache httponly{attrs}"
    lines = [
        "global",
        f"    log stdout format raw local0 {'info' if log_requests else 'notice'}",
        "    maxconn 4096",
        *([f"    stats socket {run_dir / 'haproxy.sock'} mode 600 level admin"] if run_dir else []),
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        "    # X-Forwarded-For: the visitor's address, for the workers' per-client limits",
        "    option forwardfor",
        "    # a dead worker's visitors go to a live one on their next request",
        "    option redispatch",
        "    retries 2",
        "    timeout connect 5s",
        "    # Gradio's event streams send a heartbeat every 15 s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout tunnel 1h",
        "    timeout http-request 10s",
        "    timeout queue 5s",
        *([f"    errorfile 503 {run_dir / '503.http'}"] if run_dir else []),
        "",
        "frontend voice_lab",
        f"    bind {bind}",
        "    # HAProxy is the edge: an X-Forwarded-For the visitor sent is theirs to invent.",
        "    http-request del-header X-Forwarded-For",
        "    # Responses HAProxy makes itself (429, 503) name it, as the workers name themselves.",
        "    http-after-response set-header X-Voice-Lab-Worker haproxy"
        " if !{ res.hdr(X-Voice-Lab-Worker) -m found }",
    ]
    if rate_limit:
        lines += [
            "    stick-table type ipv6 size 100k expire 60s store http_req_rate(10s)",
            "    http-request track-sc0 src,ipmask(32,64)",
            f"    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {rate_limit} }}",
        ]
    lines += [
        "    # Every worker full: the page still loads, and the app refuses the call itself.",
        "    use_backend workers_full if { nbsrv(workers) eq 0 }",
        "    default_backend workers",
        "",
        "backend workers",
        "    # Every open page holds a connection (its event stream): least connections",
        "    # is the worker with the fewest visitors.",
        "    balance leastconn",
        f"    {cookie}",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        f"    default-server check inter {CHECK_INTERVAL} fall 2 rise 2",
    ]
    lines += [
        f"    server {s.name} {s.address} cookie {s.name}"
        + (
            f" agent-check agent-port {s.agent_port} agent-inter {CHECK_INTERVAL}"
            if s.agent_port
            else ""
        )
        for s in servers
    ]
    lines += [
        "",
        "backend workers_full",
        "    balance leastconn",
        f"    {cookie}",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        f"    default-server check inter {CHECK_INTERVAL} fall 2 rise 2",
    ]
    lines += [f"    server {s.name} {s.address} cookie {s.name}" for s in servers]
    return "\n".join(lines) + "\n"
