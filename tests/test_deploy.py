"""``python -m deploy``: workers behind a real HAProxy (and coturn), on loopback.

Everything is a real process: the launcher, HAProxy from Debian, each worker a
``python app.py``, coturn for relayed media; the visitors are aiortc clients
speaking the page's protocol, and headless Chromium in tests/test_deploy_browser.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from deploy import haproxy
from deploy.processes import find_program
from testkit.app import AppProcess, free_port
from testkit.deploy import DeployProcess, bound_ports
from testkit.webrtc_client import WebRTCClient, http_session, page_api, question_audio

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


def _ports(deploy: DeployProcess, *extra: int) -> list[int]:
    workers = deploy.workers.values()
    return [deploy.port, *(int(w["url"].rsplit(":", 1)[1]) for w in workers), *extra] + [
        w["agent_port"] for w in workers
    ]


async def test_a_call_relayed_by_coturn_is_answered_and_sigterm_leaves_nothing(tmp_path: Path):
    """The visitor may only use the relay (``iceTransportPolicy: relay``, as the page is told).

    Its offer then carries relay candidates only: coturn's addresses, never its
    own, so the call's media can only have gone through coturn.
    """
    turn_port = free_port()
    deploy = DeployProcess(
        workers=1,
        extra_env={"VOICE_LAB_TURN_POLICY": "relay"},
        args=("--turn", "--turn-port", str(turn_port)),
        log_path=tmp_path / "deploy.log",
    )
    async with deploy:
        ports = _ports(deploy, turn_port)
        async with http_session() as http:
            visitor = WebRTCClient(http, deploy.url, await page_api(http, deploy.url), "relayed")
            try:
                await visitor.connect()
                await visitor.wait_until_live()
                offered = [
                    line
                    for line in (visitor.pc.localDescription.sdp or "").splitlines()
                    if line.startswith("a=candidate")
                ]
                assert offered and all(" typ relay " in line for line in offered), offered
                heard = await visitor.turn(QUESTION, question_audio(QUESTION))
                assert heard["voice_to_voice"] is not None, (
                    f"no reply over the relay: {heard}\n{deploy.tail()}"
                )
                assert heard["reply_seconds"] > 0.5, heard
            finally:
                await visitor.close()
        assert any("[turn]" in line for line in deploy.lines), "coturn printed nothing"
        code = deploy.stop(signal.SIGTERM)

    assert code == 0, deploy.tail()
    assert not deploy.leftovers(), f"still running: {deploy.leftovers()}"
    assert not bound_ports(ports), f"ports still bound: {bound_ports(ports)}"


def test_a_worker_that_fails_to_start_stops_everything(tmp_path: Path):
    """A configuration typo every worker trips on: the launcher says so and leaves nothing."""
    deploy = DeployProcess(
        workers=2, extra_env={"VOICE_LAB_MAX_SESSIONS": "many"}, log_path=tmp_path / "deploy.log"
    )
    with pytest.raises(RuntimeError, match="exited with 1") as failure:
        deploy.start()
    message = str(failure.value)
    assert "failed to start" in message, message
    assert "Voice Lab cannot start: VOICE_LAB_MAX_SESSIONS:" in message, message
    assert any(line.startswith("[deploy] starting w") for line in deploy.lines), deploy.tail()
    assert not deploy.leftovers(), f"still running: {deploy.leftovers()}"
    assert not bound_ports([deploy.port]), "the balancer's port is still bound"


def test_the_balancer_configuration_is_valid_for_haproxy(tmp_path: Path):
    """What ``python -m deploy balancer --print-config`` gives a team's own HAProxy."""
    servers = [haproxy.Server("w1", "10.0.0.11", 7861, 7961), haproxy.Server("w2", "::1", 7861)]
    for run_dir in (None, tmp_path):
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy.configuration(servers, bind="127.0.0.1:7860", run_dir=run_dir))
        check = subprocess.run(
            [find_program("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    text = config.read_text()
    assert "cookie VOICE_LAB_WORKER insert" in text and "agent-port 7961" in text
    assert "server w2 [::1]:7861 cookie w2\n" in text


def _agent_answer(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as agent:
        return agent.recv(100).decode()


async def test_a_draining_worker_finishes_its_call_then_exits(tmp_path: Path):
    """SIGUSR1 (a rolling restart's first step): no new visitors, the call goes on, then exit."""
    agent_port = free_port()
    app = AppProcess(
        tmp_path / "app.log", max_sessions=2, extra_env={"VOICE_LAB_AGENT_PORT": str(agent_port)}
    )
    async with app, http_session() as http:
        visitor = WebRTCClient(http, app.url, await page_api(http, app.url), "caller")
        try:
            await visitor.connect()
            await visitor.wait_until_live()
            assert _agent_answer(agent_port) == "ready 50%\n"  # one of two slots taken

            os.kill(app.process.pid, signal.SIGUSR1)
            # The worker's main thread takes the signal when it next runs: wait for that.
            health = await asyncio.to_thread(app.health_when, lambda h: h["draining"], 10)
            assert not health["accepting"], health
            assert _agent_answer(agent_port) == "drain\n"

            heard = await visitor.turn(QUESTION, question_audio(QUESTION))
            assert heard["voice_to_voice"] is not None, f"the call did not go on: {heard}"
            assert app.process.poll() is None, "the worker left before its call ended"
        finally:
            await visitor.close()
        code = await asyncio.to_thread(app.process.wait, 30)
    assert code == -signal.SIGTERM, app.log_tail()
    assert "drained (0 call(s) left): exiting" in app.log_tail(), app.log_tail()
