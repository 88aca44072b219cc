"""A fake of the Hugging Face hub's file endpoints on 127.0.0.1, as ``huggingface_hub`` calls them.

Point ``HF_ENDPOINT`` at :attr:`FakeHub.base_url` and ``hf_hub_download``
fetches from here, over the same requests it makes to huggingface.co
(``huggingface_hub/file_download.py``, ``get_hf_file_metadata`` and
``http_get``):

- ``HEAD /{repo_id}/resolve/{revision}/{filename}``: a large (LFS) file
  answers ``302`` to its CDN URL with ``X-Repo-Commit`` (the commit the
  revision names), ``X-Linked-Etag`` (the content's SHA-256, quoted),
  ``X-Linked-Size`` and an ``ETag`` of its own; a small file answers ``200``
  with the git blob's SHA-1 as ``ETag``. The client does not follow a
  redirect to another host on HEAD: the CDN is served here under the host
  name ``localhost``, so it is another host to the client, as the real CDN is.
- ``GET`` of the CDN URL: the bytes, with ``Content-Length`` and ``Range``.
- an unknown repository, revision or file: ``404`` with the hub's
  ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

``corrupt=True`` serves other bytes than the ones the ETag promises (same
size): a transfer gone wrong, or a tampered mirror. Every request is kept
in :attr:`FakeHub.requests` (method, path, host).
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

LFS_THRESHOLD = 10 * 1024 * 1024  # the hub keeps files this large in LFS (here: by size)


@dataclass
class HubFile:
    path: Path  # what it serves
    sha256: str
    size: int


@dataclass
class Repo:
    commit: str
    files: dict[str, HubFile] = field(default_factory=dict)
    branches: tuple[str, ...] = ("main",)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FakeHub:
    """``async with FakeHub() as hub:``; :meth:`add` files, then download from ``hub.base_url``."""

    def __init__(self, *, corrupt: bool = False, scratch: Path | None = None):
        self.corrupt = corrupt
        self._scratch = scratch
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo_id: str, filename: str, source: Path, commit: str) -> HubFile:
        """Serve ``source`` as ``filename`` of ``repo_id`` at ``commit`` (also its ``main``)."""
        served = source
        sha = sha256_of(source)
        if self.corrupt:
            served = self._corrupted(source)
        hub_file = HubFile(served, sha, source.stat().st_size)
        repo = self.repos.setdefault(repo_id, Repo(commit))
        repo.commit = commit
        repo.files[filename] = hub_file
        return hub_file

    def _corrupted(self, source: Path) -> Path:
        """A copy of ``source`` with one byte changed half-way."""
        assert self._scratch is not None, "corrupt=True needs a scratch folder"
        copy = self._scratch / f"corrupt-{source.name}"
        data = bytearray(source.read_bytes())
        data[len(data) // 2] ^= 0xFF
        copy.write_bytes(bytes(data))
        return copy

    async def start(self) -> FakeHub:
        app = web.Application()
        app.router.add_route("*", "/cdn/{repo:.+}/{sha}", self._cdn)
        app.router.add_route("*", "/{owner}/{name}/resolve/{revision}/{filename:.+}", self._resolve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeHub:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _record(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path, request.host))

    @staticmethod
    def _missing(code: str, message: str) -> web.Response:
        return web.Response(
            status=404, text=message, headers={"X-Error-Code": code, "X-Error-Message": message}
        )

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        revision, filename = request.match_info["revision"], request.match_info["filename"]
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._missing("RepoNotFound", "Repository not found")
        if revision != repo.commit and revision not in repo.branches:
            return self._missing("RevisionNotFound", f"Invalid rev id: {revision}")
        hub_file = repo.files.get(filename)
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if hub_file is None:
            return web.Response(
                status=404,
                text="Entry not found",
                headers={**headers, "X-Error-Code": "EntryNotFound"},
            )
        if hub_file.size < LFS_THRESHOLD:
            git_sha1 = hashlib.sha1(hub_file.path.read_bytes()).hexdigest()
            return web.FileResponse(hub_file.path, headers={**headers, "ETag": f'"{git_sha1}"'})
        body = b"Found. Redirecting to the CDN"
        cdn = f"http://localhost:{self.port}/cdn/{repo_id}/{hub_file.sha256}"
        return web.Response(
            status=302,
            body=body,
            content_type="text/plain",
            headers={
                **headers,
                "Location": cdn,
                "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                "X-Linked-Etag": f'"{hub_file.sha256}"',
                "X-Linked-Size": str(hub_file.size),
            },
        )

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo = self.repos.get(request.match_info["repo"])
        sha = request.match_info["sha"]
        found = [f for f in (repo.files.values() if repo else ()) if f.sha256 == sha]
        if not found:
            return web.Response(status=403, text="AccessDenied")
        name = next(n for n, f in repo.files.items() if f is found[0])
        return web.FileResponse(
            found[0].path,
            headers={
                "ETag": f'"{sha}"',
                "Content-Disposition": f'attachment; filename="{Path(name).name}"',
            },
        )
