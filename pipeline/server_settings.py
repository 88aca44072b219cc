"""The server's settings, typed and checked: admission, its name as a worker, sessions' defaults,
uploads and exports, the TURN relay.

``app.py`` reads them once, before anything heavy is imported (this module
needs pydantic only), and hands them down. OpenTelemetry's own ``OTEL_*``
variables, the providers' keys and the trusted proxies are read where they are
used (docs/configuration.md lists every variable).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

DEFAULT_SYSTEM_PROMPT = (
    "You are Voice Lab, a friendly voice assistant. Your words are spoken aloud, "
    "so answer in one or two short, plain sentences. No lists, no markdown, no emoji."
)


TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def env_flag(name: str, default: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """The one true/false rule for every setting: 1/true/yes/on, 0/false/no/off, unset: default.

    Anything else is a mistake worth stopping for, not a guess.
    """
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    return _flag(value, name)


def _flag(value: object, name: str | None = None) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    given = f"{name}={word!r}" if name else repr(word)
    raise ValueError(f"{given}: expected one of {', '.join(TRUE + FALSE)}")


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# A true/false setting, read by the one rule above (pydantic's own accepts more words).
Flag = Annotated[bool, BeforeValidator(_flag)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Megabytes = Annotated[float, Field(gt=0, allow_inf_nan=False)]
ENV_PREFIX = "VOICE_LAB_"


class SettingsError(ValueError):
    """A ``VOICE_LAB_*`` variable that does not hold what it must: each problem, named."""


class ServerSettings(BaseModel):
    """``VOICE_LAB_<FIELD NAME>`` sets each field; unset or empty, its default holds.

    A wrong value stops the start with the variable named.
    :class:`pipeline.config.SessionConfig` takes its defaults from the fields named as its own
    (the "every session's defaults" group).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- admission: how many, who, how fast (ui.webrtc_guard) --
    # Browser connections the server accepts at once (beyond that: a clear refusal).
    max_sessions: int = 4
    # Connections one client may hold at once (see :attr:`per_client`).
    max_sessions_per_client: int = 2
    # A connection that sent no audio this long after its offer is closed, its slot freed.
    admission_secs: Seconds = 10.0
    # A connection whose ICE and DTLS have not completed this long after its offer is closed.
    handshake_secs: Seconds = 5.0
    # WebRTC offers one client may make per minute (each press of Record is one).
    offers_per_minute: Annotated[int, Field(ge=1)] = 12
    # Whether this server offers tools at all (0: never, whatever the page asks).
    tools: Flag = True
    # How long one visitor may use the server's own API keys per window (0: no limit).
    # On a public Space the owner's keys serve every visitor who types none, so
    # each visitor gets 90 s on them (fastrtc's demos use that), then goes on
    # with the local models; elsewhere there is no limit unless set.
    server_key_secs: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    # The window a visitor's time on the server's keys is counted over (then it starts afresh).
    server_key_window_secs: Seconds = 3600.0

    # -- this process as one worker of several (python -m deploy) --
    # The name this process gives itself in responses, logs and health answers:
    # ``python -m deploy`` names its workers w1, w2...; else host:port.
    worker_id: str | None = None
    # The TCP port where HAProxy's agent-check asks whether this worker takes new visitors.
    agent_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    # The cookie the balancer pins a visitor to a worker with; a full worker
    # expires it, so the visitor's next page load goes to a worker with room.
    balancer_cookie: str | None = None
    # One log line per HTTP request (method, path, status, worker).
    access_log: Flag = False

    # -- every session's defaults (SessionConfig) --
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    vad_stop_secs: Seconds = 0.2
    speculative: Flag = True
    llm_max_tokens: Annotated[int, Field(ge=1)] = 80
    audio_gone_secs: Seconds = 1.5
    idle_timeout_secs: Seconds = 600.0
    # A tool call not answered after this long gets its waiting phrase ...
    tool_wait_phrase_secs: Seconds = 0.8
    # ... and after this long is abandoned with an apology.
    tool_timeout_secs: Seconds = 5.0
    # Simulated back-end time added to every tool call (to hear the waiting phrase).
    tool_latency_secs: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0

    # -- uploads and exports (ui.limits, ui.export) --
    # Megabytes one client may upload per 10 minutes (each upload counts as at least 1 MB).
    upload_mb_per_client: Megabytes = 32.0
    # The most Gradio's upload cache may hold; beyond it uploads wait for its sweep.
    upload_cache_mb: Megabytes = 512.0
    # Exported files are deleted past this age or count.
    export_max_age_secs: Seconds = 3600.0
    export_max_files: Annotated[int, Field(ge=1)] = 200

    # -- the TURN relay (ui.relay, docs/deploy.md) --
    # "cloudflare": fastrtc's Cloudflare credentials (the default on a Space with HF_TOKEN).
    turn: Annotated[Literal["cloudflare"] | None, BeforeValidator(_lower)] = None
    # Your own TURN server's turn: URLs (comma-separated in the variable) ...
    turn_urls: Annotated[tuple[str, ...], BeforeValidator(_comma_list)] = ()
    # ... and its shared secret (coturn use-auth-secret), or fixed credentials.
    turn_secret: SecretStr | None = None
    turn_username: str | None = None
    turn_credential: SecretStr | None = None
    # "relay": browsers send media through the relay only; "all" (the default): any path.
    turn_policy: Annotated[Literal["relay", "all"], BeforeValidator(_lower)] = "all"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> ServerSettings:
        """The settings the environment sets (unset or empty: the default); raises SettingsError."""
        given: dict[str, object] = {
            name: value
            for name in cls.model_fields
            if (value := environ.get(ENV_PREFIX + name.upper(), "").strip())
        }
        if environ.get("SPACE_ID"):
            given.setdefault("server_key_secs", 90.0)
            if environ.get("HF_TOKEN"):
                given.setdefault("turn", "cloudflare")
        given.setdefault("worker_id", _default_worker_id(environ))
        try:
            return cls.model_validate(given)
        except ValidationError as e:
            raise SettingsError(
                "; ".join(
                    f"{ENV_PREFIX}{str(problem['loc'][0]).upper()}: "
                    + problem["msg"].removeprefix("Value error, ")
                    for problem in e.errors(include_url=False, include_input=False)
                )
            ) from None

    @property
    def sessions(self) -> int:
        """Connections accepted at once (at least one)."""
        return max(1, self.max_sessions)

    @property
    def per_client(self) -> int:
        """Connections one client may hold: fewer than the total, so none holds every slot.

        (With a single slot in all, that one.)
        """
        return max(1, min(self.max_sessions_per_client, self.sessions - 1))

    @property
    def worker(self) -> str:
        return self.worker_id or _default_worker_id(os.environ)


def _default_worker_id(environ: Mapping[str, str]) -> str:
    """A single process is named after its host and port, so two servers on one machine differ."""
    import socket

    port = environ.get("GRADIO_SERVER_PORT", "7860").strip()
    return f"{socket.gethostname()}:{port}"


def worker_id() -> str:
    """This process's name (``VOICE_LAB_WORKER_ID``, else host:port), for telemetry labels."""
    return ServerSettings.from_environ().worker
