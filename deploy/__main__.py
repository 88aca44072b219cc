"""``python -m deploy``: Voice Lab for more visitors than one process carries.

On one machine (workers and HAProxy; ``--turn`` adds coturn for relayed media):

    python -m deploy --workers 2 --port 7860
    python -m deploy --workers 2 --port 7860 --host 0.0.0.0 --turn --turn-external-ip 203.0.113.7

HAProxy alone, in front of workers on other machines (each runs ``python app.py``
with the variables docs/deploy.md lists); ``--print-config`` writes the configuration
for your own HAProxy instead of running one:

    python -m deploy balancer --port 80 --server w1=10.0.0.11:7861:7961 \\
        --server w2=10.0.0.12:7861:7961

Ctrl-C (or SIGTERM) stops everything it started; SIGHUP restarts the workers
one at a time, each draining first (no new visitors; current calls finish).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path

from deploy import coturn, haproxy
from deploy.launcher import DeployError, Deployment, Options
from deploy.processes import Child, StartFailed, find_program, http_ok, wait_until


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _server(text: str) -> haproxy.Server:
    """``NAME=HOST:PORT[:AGENT_PORT]``; an IPv6 host in brackets."""
    try:
        name, _, address = text.partition("=")
        if address.startswith("["):
            host, _, ports = address[1:].partition("]:")
        else:
            host, _, ports = address.partition(":")
        port, _, agent = ports.partition(":")
        if not name or not host:
            raise ValueError
        return haproxy.Server(name, host, int(port), int(agent) if agent else None)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give NAME=HOST:PORT or NAME=HOST:PORT:AGENT_PORT"
        ) from None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m deploy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, default=7860, help="where HAProxy listens")
    parser.add_argument("--host", default="127.0.0.1", help="HAProxy's address (0.0.0.0: all)")
    parser.add_argument(
        "--cookie-attr",
        action="append",
        default=[],
        help='an attribute of the balancer cookie, e.g. "SameSite=None" and "Secure" when the page'
        " is embedded in another site's iframe",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=haproxy.RATE_LIMIT_PER_10S,
        help="requests one address (IPv6: one /64) may make per 10 s; 0: no limit",
    )
    parser.add_argument(
        "--log-requests", action="store_true", help="log every request (HAProxy and workers)"
    )
    modes = parser.add_subparsers(dest="mode")
    balancer = modes.add_parser("balancer", help="HAProxy only, in front of workers elsewhere")
    balancer.add_argument(
        "--server",
        type=_server,
        action="append",
        required=True,
        help="a worker: NAME=HOST:PORT[:AGENT_PORT] (repeat per worker)",
    )
    balancer.add_argument(
        "--print-config", action="store_true", help="print haproxy.cfg and exit (your HAProxy)"
    )
    parser.add_argument("--workers", type=int, default=_cores(), help="default: one per core")
    parser.add_argument(
        "--max-sessions", type=int, help="sessions per worker (default: VOICE_LAB_MAX_SESSIONS)"
    )
    parser.add_argument(
        "--no-restart", action="store_true", help="leave a worker that exits stopped"
    )
    parser.add_argument("--turn", action="store_true", help="also run coturn, a TURN relay")
    parser.add_argument("--turn-port", type=int, default=3478)
    parser.add_argument(
        "--turn-listen", default=None, help="coturn's address (default: HAProxy's --host)"
    )
    parser.add_argument(
        "--turn-external-ip", help="the relay's public address when this machine is behind NAT"
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    turn = None
    if args.turn:
        listen = args.turn_listen or ("127.0.0.1" if args.host == "127.0.0.1" else "0.0.0.0")
        turn = coturn.TurnServer(
            listen, args.turn_port, secrets.token_urlsafe(24), external_ip=args.turn_external_ip
        )
    deployment = Deployment(
        Options(
            workers=args.workers,
            port=args.port,
            host=args.host,
            max_sessions=args.max_sessions,
            turn=turn,
            restart=not args.no_restart,
            log_requests=args.log_requests,
            cookie_attrs=tuple(args.cookie_attr),
            rate_limit=args.rate_limit,
        )
    )
    roll = threading.Event()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, lambda *_: roll.set())
    try:
        deployment.start()
        print(deployment.summary(), flush=True)
        while True:
            if roll.is_set():
                roll.clear()
                deployment.roll()
            deployment.supervise_once()
            roll.wait(0.5)
    except KeyboardInterrupt:
        print("[deploy] stopping", flush=True)
        return 0
    except (DeployError, StartFailed) as e:
        print(f"[deploy] {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        deployment.stop()
        print("[deploy] stopped", flush=True)


def run_balancer(args: argparse.Namespace) -> int:
    import tempfile

    run_dir = None if args.print_config else Path(tempfile.mkdtemp(prefix="voice-lab-haproxy-"))
    config = haproxy.configuration(
        args.server,
        bind=f"{args.host}:{args.port}",
        run_dir=run_dir,
        cookie_attrs=tuple(args.cookie_attr),
        rate_limit=args.rate_limit,
        log_requests=args.log_requests,
    )
    if args.print_config:
        print(config, end="")
        return 0
    path = run_dir / "haproxy.cfg"
    path.write_text(config)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    balancer = Child("haproxy", [find_program("haproxy") or "haproxy", "-db", "-f", str(path)])
    try:
        balancer.start()
        host = "127.0.0.1" if args.host == "0.0.0.0" else args.host
        wait_until(lambda: http_ok(f"http://{host}:{args.port}/health"), balancer, 60, "HAProxy")
        print(f"HAProxy on {args.host}:{args.port} in front of {len(args.server)} worker(s)")
        balancer.process.wait()
        return balancer.exit_code() or 0
    except KeyboardInterrupt:
        return 0
    except StartFailed as e:
        print(f"[deploy] {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        balancer.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.mode == "balancer":
        return run_balancer(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
