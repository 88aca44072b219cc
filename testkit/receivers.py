"""The real receivers teams run, started on loopback for tests and the benchmark.

- :class:`Phoenix`: Arize Phoenix (``phoenix serve``), an OpenTelemetry trace
  backend taking OTLP/HTTP on ``/v1/traces``; its REST API gives the spans back.
  It lives in a virtualenv of its own (``.venv-phoenix``, from
  ``requirements-phoenix.txt``, made by ``tests/run.sh``): it needs newer
  pydantic and starlette than gradio 5.50 allows.
- :class:`Prometheus`: Debian's ``prometheus`` server, scraping the app's
  ``/metrics`` with a generated configuration and a temporary store; its HTTP
  query API answers PromQL.

Both on free ports, with everything they write in a temporary directory, and
stopped (process group) on leaving.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from testkit.app import ROOT, free_port

START_TIMEOUT = 180.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str, timeout: float = 10) -> dict:
    with _DIRECT.open(url, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError), _DIRECT.open(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)  # polling interval, not synchronisation
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


class _Server:
    """A subprocess in its own process group, its output in ``directory/server.log``."""

    def __init__(self, name: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"voice-lab-{name}-"))
        self.log = self.directory / "server.log"
        self.process: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict[str, str], ready_url: str) -> None:
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_for(ready_url, self.process, self.log, START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):
        raise NotImplementedError


def phoenix_executable() -> str:
    """``phoenix`` from ``.venv-phoenix`` (or ``VOICE_LAB_PHOENIX``): made by ``tests/run.sh``."""
    path = os.environ.get("VOICE_LAB_PHOENIX") or str(ROOT / ".venv-phoenix" / "bin" / "phoenix")
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"Arize Phoenix not found at {path}: run `python3 -m venv .venv-phoenix && "
            ".venv-phoenix/bin/pip install -r requirements-phoenix.txt` (tests/run.sh does)"
        )
    return path


class Phoenix(_Server):
    """``phoenix serve`` on loopback: OTLP/HTTP in at :attr:`endpoint`, spans out by REST."""

    def __init__(self) -> None:
        super().__init__("phoenix")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        """What ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to (the SDK appends ``/v1/traces``)."""
        return self.url

    def start(self) -> Phoenix:
        env = {
            **os.environ,
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(free_port()),
            "PHOENIX_WORKING_DIR": str(self.directory),
            # Offline: no usage reports, no fonts or scripts from the web in its page.
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        for name in [n for n in env if n.startswith("OTEL_")]:
            env.pop(name)  # Phoenix instruments itself from these
        self._spawn([phoenix_executable(), "serve"], env, f"{self.url}/healthz")
        return self

    def spans(self, trace_id: str | None = None, project: str = "default") -> list[dict]:
        """Every span Phoenix holds (of ``trace_id``'s trace), as its REST API gives them.

        A project that has no spans yet does not exist: none.
        """
        found: list[dict] = []
        cursor = None
        while True:
            query = {"limit": 1000, **({"trace_id": trace_id} if trace_id else {})}
            if cursor:
                query["cursor"] = cursor
            url = f"{self.url}/v1/projects/{project}/spans?{urllib.parse.urlencode(query)}"
            try:
                page = _get_json(url)
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return found
                raise
            found += page.get("data", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return found

    def post_otlp(self, body: bytes) -> int:
        """POST an OTLP/protobuf ``ExportTraceServiceRequest``; returns the HTTP status."""
        request = urllib.request.Request(
            f"{self.url}/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
            method="POST",
        )
        with _DIRECT.open(request, timeout=10) as response:
            return response.status


def prometheus_executable() -> str:
    path = os.environ.get("VOICE_LAB_PROMETHEUS") or shutil.which("prometheus")
    if not path:
        raise RuntimeError("Prometheus not found: install Debian's 'prometheus' package")
    return path


class Prometheus(_Server):
    """Debian's Prometheus, scraping ``targets`` every ``interval``.

    Job ``voice-lab`` scrapes with ``token`` (a bearer token, from a file);
    with ``also_without_token`` a second job, ``voice-lab-no-token``, scrapes
    the same targets without it.
    """

    def __init__(
        self,
        targets: list[str],
        token: str | None = None,
        interval: str = "1s",
        also_without_token: bool = False,
    ) -> None:
        super().__init__("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        self.token = token
        self.interval = interval
        self.also_without_token = also_without_token

    def config(self) -> str:
        """The scrape configuration (docs/observability.md shows the same shape)."""
        targets = json.dumps(self.targets)
        jobs = [("voice-lab", self.token)]
        if self.also_without_token:
            jobs.append(("voice-lab-no-token", None))
        lines = ["global:", f"  scrape_interval: {self.interval}", "scrape_configs:"]
        for name, token in jobs:
            lines += [f"  - job_name: {name}", "    metrics_path: /metrics"]
            if token is not None:
                token_file = self.directory / f"{name}.token"
                token_file.write_text(token)
                token_file.chmod(0o600)
                lines += [
                    "    authorization:",
                    "      type: Bearer",
                    f"      credentials_file: {token_file}",
                ]
            lines += ["    static_configs:", f"      - targets: {targets}"]
        return "\n".join(lines) + "\n"

    def start(self) -> Prometheus:
        config = self.directory / "prometheus.yml"
        config.write_text(self.config())
        argv = [
            prometheus_executable(),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self._spawn(argv, {**os.environ, "NO_PROXY": "127.0.0.1"}, f"{self.url}/-/ready")
        return self

    def query(self, expr: str) -> list[dict]:
        """An instant PromQL query's result vector."""
        answer = _get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        if answer.get("status") != "success":
            raise RuntimeError(f"{expr}: {answer}")
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value ``expr`` gives (None: no series)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate, timeout: float = 30.0) -> float | None:
        """Query until ``predicate(value)`` holds (scrapes come every ``interval``)."""
        deadline = time.monotonic() + timeout
        value = self.value(expr)
        while not predicate(value):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr} = {value} after {timeout:.0f}s")
            time.sleep(0.5)  # the next scrape
            value = self.value(expr)
        return value
