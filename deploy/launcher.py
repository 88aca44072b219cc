"""N ``python app.py`` workers behind HAProxy on one machine, optionally with coturn.

The launcher only starts, watches and stops programs: HAProxy balances
(:mod:`deploy.haproxy`), coturn relays (:mod:`deploy.coturn`), and each worker
is the app exactly as ``python app.py`` runs it, told its name, its ports and
that HAProxy is its trusted proxy.

Every program is started from the main thread (see :mod:`deploy.processes`:
a child set to die with its parent dies with the thread that started it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deploy import coturn, haproxy
from deploy.processes import Child, StartFailed, find_program, http_ok, wait_until

ROOT = Path(__file__).resolve().parent.parent
# Loading and warming the models takes ~10 s alone; far longer on a busy machine.
WORKER_START_SECS = 240.0
BALANCER_START_SECS = 30.0
# A worker that crashes again within this long of starting waits longer before the next try.
RESTART_BACKOFF_SECS = (1.0, 2.0, 5.0, 15.0, 30.0)
STABLE_SECS = 60.0


class DeployError(RuntimeError):
    """Why the deployment could not start, in words for the person who ran it."""


@dataclass
class Worker:
    name: str
    port: int
    agent_port: int
    child: Child
    started_at: float = 0.0
    # serving, or during a rolling restart: draining, then restarting
    phase: str = "serving"
    failures: int = 0
    restart_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Options:
    workers: int
    port: int
    host: str = "127.0.0.1"
    max_sessions: int | None = None
    turn: coturn.TurnServer | None = None
    restart: bool = True
    log_requests: bool = False
    cookie_attrs: tuple[str, ...] = ()
    rate_limit: int = haproxy.RATE_LIMIT_PER_10S
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Deployment:
    """Start with :meth:`start`, keep alive with :meth:`supervise`, end with :meth:`stop`."""

    def __init__(self, options: Options, echo=None):
        self.options = options
        self.echo = echo or (lambda line: print(line, flush=True))
        self.run_dir = Path(tempfile.mkdtemp(prefix="voice-lab-deploy-"))
        self.workers: list[Worker] = []
        self.balancer: Child | None = None
        self.relay: Child | None = None
        self._rolling: list[str] = []  # workers still to restart, in order
        self._draining: Worker | None = None

    # -- start -------------------------------------------------------------------------

    def start(self) -> None:
        options = self.options
        if find_program("haproxy") is None:
            raise DeployError("HAProxy is not installed: apt-get install haproxy (Debian/Ubuntu).")
        if _port_taken(options.host, options.port):
            raise DeployError(f"Port {options.port} on {options.host} is already in use.")
        if options.turn is not None:
            self._start_relay(options.turn)
        for i in range(1, options.workers + 1):
            self.workers.append(self._new_worker(f"w{i}"))
        for worker in self.workers:
            self._start_worker(worker)
        for worker in self.workers:
            wait_until(
                lambda w=worker: http_ok(w.url + "/health"),
                worker.child,
                WORKER_START_SECS,
                f"worker {worker.name} on port {worker.port}",
            )
        self._start_balancer()

    def _start_worker(self, worker: Worker) -> None:
        worker.child.start()
        worker.started_at = time.monotonic()
        self.echo(f"[deploy] starting {worker.name} (pid {worker.child.pid}) on port {worker.port}")

    def _new_worker(self, name: str) -> Worker:
        port, agent_port = free_port(), free_port()
        env = {
            **self.options.env,
            "VOICE_LAB_WORKER_ID": name,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "VOICE_LAB_AGENT_PORT": str(agent_port),
            "VOICE_LAB_BALANCER_COOKIE": haproxy.COOKIE,
            # HAProxy connects from 127.0.0.1 and puts the visitor's address in X-Forwarded-For.
            "VOICE_LAB_TRUSTED_PROXIES": "127.0.0.1",
        }
        if self.options.max_sessions is not None:
            env["VOICE_LAB_MAX_SESSIONS"] = str(self.options.max_sessions)
        if self.options.log_requests:
            env["VOICE_LAB_ACCESS_LOG"] = "1"
        if self.options.turn is not None:
            env.update(self.options.turn.app_environment())
        child = Child(name, [sys.executable, "app.py"], env=env, cwd=str(ROOT), echo=self.echo)
        return Worker(name, port, agent_port, child)

    def _start_relay(self, turn: coturn.TurnServer) -> None:
        turnserver = find_program("turnserver")
        if turnserver is None:
            raise DeployError("coturn is not installed: apt-get install coturn (Debian/Ubuntu).")
        config = self.run_dir / "turnserver.conf"
        config.write_text(coturn.configuration(turn, self.run_dir))
        self.relay = Child("turn", [turnserver, "-c", str(config)], echo=self.echo).start()
        wait_until(
            lambda: _port_taken(turn.listen_ip, turn.port),
            self.relay,
            BALANCER_START_SECS,
            f"coturn on {turn.listen_ip}:{turn.port}",
        )

    def _start_balancer(self) -> None:
        options = self.options
        servers = [haproxy.Server(w.name, "127.0.0.1", w.port, w.agent_port) for w in self.workers]
        bind = (
            f"[{options.host}]:{options.port}"
            if ":" in options.host
            else (f"{options.host}:{options.port}")
        )
        config = self.run_dir / "haproxy.cfg"
        config.write_text(
            haproxy.configuration(
                servers,
                bind=bind,
                run_dir=self.run_dir,
                cookie_attrs=options.cookie_attrs,
                rate_limit=options.rate_limit,
                log_requests=options.log_requests,
            )
        )
        program = find_program("haproxy") or "haproxy"
        check = subprocess.run(
            [program, "-c", "-q", "-f", str(config)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise DeployError(f"HAProxy refused its configuration:\n{check.stdout}{check.stderr}")
        self.balancer = Child("haproxy", [program, "-db", "-f", str(config)], echo=self.echo)
        self.balancer.start()
        host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
        host = f"[{host}]" if ":" in host else host
        wait_until(
            lambda: http_ok(f"http://{host}:{options.port}/health"),
            self.balancer,
            BALANCER_START_SECS,
            f"HAProxy on port {options.port}",
        )

    # -- run ---------------------------------------------------------------------------

    def summary(self) -> str:
        """What was started, for the person at the terminal."""
        health = self._health(self.workers[0]) if self.workers else {}
        per_worker = health.get("capacity")
        shown = "localhost" if self.options.host in ("127.0.0.1", "0.0.0.0", "::") else None
        url = f"http://{shown or self.options.host}:{self.options.port}"
        lines = [f"Voice Lab is ready at {url}"]
        if per_worker:
            total = per_worker * len(self.workers)
            lines.append(
                f"  {len(self.workers)} worker(s) behind HAProxy, {per_worker} session(s) each:"
                f" {total} calls at once"
            )
        for w in self.workers:
            lines.append(
                f"  {w.name}  {w.url}  (agent-check port {w.agent_port}, pid {w.child.pid});"
                f" metrics: {w.url}/metrics"
            )
        if self.options.turn is not None:
            lines.append(f"  TURN relay (coturn): {', '.join(self.options.turn.urls)}")
        lines.append(
            "Ctrl-C stops everything; SIGHUP restarts the workers one by one (each drains first)."
        )
        return "\n".join(lines)

    def _health(self, worker: Worker) -> dict:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(worker.url + "/health", timeout=2) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return {}

    def roll(self) -> None:
        """Restart every worker in turn: drain (no new visitors; calls finish), restart, ready."""
        if not self._rolling and self._draining is None:
            self._rolling = [w.name for w in self.workers]
            self.echo("[deploy] rolling restart: each worker drains, then restarts")

    def supervise_once(self) -> None:
        """One look at every program (call it twice a second from the main thread)."""
        if self.balancer is not None and not self.balancer.running():
            raise DeployError(f"HAProxy exited (code {self.balancer.exit_code()}).")
        if self.relay is not None and not self.relay.running():
            raise DeployError(f"coturn exited (code {self.relay.exit_code()}).")
        self._step_rolling_restart()
        now = time.monotonic()
        for worker in self.workers:
            if worker is self._draining or worker.child.running():
                continue
            if worker.restart_at is None:
                if now - worker.started_at > STABLE_SECS:
                    worker.failures = 0
                delay = RESTART_BACKOFF_SECS[min(worker.failures, len(RESTART_BACKOFF_SECS) - 1)]
                worker.failures += 1
                if not self.options.restart:
                    self.echo(
                        f"[deploy] {worker.name} exited (code {worker.child.exit_code()}):"
                        " HAProxy sends its visitors elsewhere; not restarting it (--no-restart)"
                    )
                    worker.restart_at = float("inf")
                    continue
                self.echo(
                    f"[deploy] {worker.name} exited (code {worker.child.exit_code()}):"
                    f" HAProxy sends its visitors elsewhere; restarting it in {delay:.0f} s"
                )
                worker.restart_at = now + delay
            elif now >= worker.restart_at:
                worker.restart_at = None
                self._start_worker(worker)

    def _step_rolling_restart(self) -> None:
        worker = self._draining
        if worker is None:
            if self._rolling:
                worker = self._draining = self._worker(self._rolling.pop(0))
                worker.phase = "draining"
                self.echo(f"[deploy] {worker.name}: draining (no new visitors; calls finish)")
                if worker.child.running():
                    os.kill(worker.child.pid, signal.SIGUSR1)
            return
        if worker.phase == "draining" and not worker.child.running():
            self.echo(f"[deploy] {worker.name}: drained; starting it again")
            self._start_worker(worker)
            worker.phase = "restarting"
        elif worker.phase == "restarting" and (
            http_ok(worker.url + "/health") or not worker.child.running()
        ):
            # Ready, or crashed (then the usual restart with back-off takes over).
            worker.phase = "serving"
            self._draining = None

    def _worker(self, name: str) -> Worker:
        return next(w for w in self.workers if w.name == name)

    # -- stop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every program (balancer first: no new requests), then remove the run folder."""
        children = [c for c in (self.balancer, *[w.child for w in self.workers], self.relay) if c]
        for child in children:
            child.signal(signal.SIGTERM)
        for child in children:
            child.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)


__all__ = ["DeployError", "Deployment", "Options", "StartFailed", "free_port"]
