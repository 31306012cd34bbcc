"""A fake Hugging Face Hub served over real HTTP on 127.0.0.1, for tests.

The real ``huggingface_hub`` client (``hf_hub_download``, ``snapshot_download``, ``HfApi().repo_info`` and
friends, ``list_repo_files``) talks to it once ``HF_ENDPOINT`` points at it: use the ``hub_server`` fixture,
which also isolates the HF cache and token (see ``point_hf_client_at`` for what is patched and why).

Repos are local folders registered with ``FakeHub.add_repo``. Each repo has one fixed fake commit; the
revisions ``main`` and that commit sha resolve, anything else is ``RevisionNotFound``. Routes (read-only):

- ``HEAD|GET /{datasets/|spaces/|}{repo_id}/resolve/{revision}/{path}``: file body, with ``X-Repo-Commit``,
  ``ETag`` (the git blob oid, as the Hub sends for non-LFS files) and ``Content-Length``. No redirects:
  the Hub answers small (non-LFS) files with a plain 200, LFS/Xet storage is not emulated.
- ``GET /api/{models|datasets|spaces}/{repo_id}[/revision/{revision}]``: repo info (``sha``, ``siblings``...).
- ``GET /api/{...}/{repo_id}/tree/{revision}[/{path}]?recursive=``: tree listing (one page, no ``Link``).
- ``POST /api/{...}/{repo_id}/paths-info/{revision}``: info on the form-posted ``paths``.

Errors carry ``X-Error-Code``/``X-Error-Message`` like the Hub's, which is what the client maps to its
exceptions: ``RepoNotFound`` (404; 401 for a private repo without token), ``GatedRepo`` (file content of a
gated repo: 401 without token, 403 with a token not in the repo's ``tokens``), ``RevisionNotFound`` and
``EntryNotFound`` (404). Repo metadata and listings of gated repos stay public, as on the Hub.

``FakeHub.requests`` logs ``(method, path, had_auth)``; token values are never logged nor echoed. To add
routes (e.g. create repo / preupload / commit for push tests), call ``FakeHub.add_route`` with a handler
``(hub, Request) -> Response``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO_ID = r"(?P<repo_id>[^/]+(?:/[^/]+)?)"
_API = r"/api/(?P<type>models|datasets|spaces)/" + _REPO_ID


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    folder: Path
    gated: bool = False
    private: bool = False
    tokens: frozenset[str] = field(default=frozenset(), repr=False)  # tokens allowed in (gated/private)

    @property
    def sha(self) -> str:
        return hashlib.sha1(f"fake-hub:{self.repo_type}:{self.repo_id}".encode()).hexdigest()

    def files(self) -> dict[str, Path]:
        """Repo path (posix) -> local file, read at call time so tests may edit the folder."""
        found = (p for p in self.folder.rglob("*") if p.is_file())
        rel = {p.relative_to(self.folder).as_posix(): p for p in found}
        return {k: rel[k] for k in sorted(rel) if ".git" not in k.split("/")}


@dataclass
class Request:
    method: str
    path: str  # decoded, without query string
    params: dict[str, str]  # named groups of the route pattern, decoded
    query: dict[str, list[str]]
    headers: Message = field(repr=False)
    body: bytes
    token: str | None = field(repr=False)  # from "Authorization: Bearer ..."; used, never stored


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, data: object, status: int = 200, **headers: str) -> Response:
        return cls(status, {"Content-Type": "application/json", **headers}, json.dumps(data).encode())

    @classmethod
    def error(cls, status: int, code: str | None, message: str, **headers: str) -> Response:
        if code is not None:
            headers["X-Error-Code"] = code
        return cls.json({"error": message}, status, **{"X-Error-Message": message, **headers})


Handler = Callable[["FakeHub", Request], Response]


@dataclass
class Route:
    methods: tuple[str, ...]
    pattern: re.Pattern[str]
    handler: Handler


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.routes: list[Route] = []
        self._httpd: ThreadingHTTPServer | None = None
        self.add_route(
            ("GET", "HEAD"),
            r"/(?:(?P<prefix>datasets|spaces)/)?" + _REPO_ID + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)",
            resolve_file,
        )
        self.add_route(("GET",), _API + r"(?:/revision/(?P<revision>[^/]+))?", repo_info)
        self.add_route(("GET",), _API + r"/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", list_tree)
        self.add_route(("POST",), _API + r"/paths-info/(?P<revision>[^/]+)", paths_info)

    # -- setup ---------------------------------------------------------------------------------------
    def add_route(self, methods: tuple[str, ...], pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``methods`` on paths fully matching ``pattern`` (first match wins)."""
        self.routes.append(Route(tuple(methods), re.compile(pattern), handler))

    def add_repo(
        self,
        repo_id: str,
        folder: str | Path,
        repo_type: str = "dataset",
        gated: bool = False,
        private: bool = False,
        tokens: set[str] | list[str] | None = None,
    ) -> FakeRepo:
        if repo_type not in REPO_TYPES.values():
            raise ValueError(f"unknown repo_type {repo_type!r}")
        repo = FakeRepo(repo_id, repo_type, Path(folder), gated, private, frozenset(tokens or ()))
        self.repos[(repo_type, repo_id)] = repo
        return repo

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._httpd = _Server(("127.0.0.1", 0), _RequestHandler)
        self._httpd.hub = self
        serve = self._httpd.serve_forever
        threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-hub").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- request handling ------------------------------------------------------------------------------
    def dispatch(self, request: Request, raw_path: str) -> Response:
        for route in self.routes:
            match = route.pattern.fullmatch(raw_path)
            if match and request.method in route.methods:
                request.params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                return route.handler(self, request)
        return Response.error(404, None, f"fake hub has no route for {request.method} {request.path}")

    def get_repo(self, req: Request, repo_type: str, *, content: bool = False) -> FakeRepo | Response:
        """The repo named by the request, or the error response the Hub would give for it."""
        repo = self.repos.get((repo_type, req.params["repo_id"]))
        allowed = repo is not None and req.token is not None and req.token in repo.tokens
        if repo is None or (repo.private and not allowed):
            status = 401 if repo is not None and req.token is None else 404
            return Response.error(status, "RepoNotFound", "Repository not found")
        if content and repo.gated and not allowed:
            if req.token is None:
                msg = f"Access to {repo_type} {repo.repo_id} is restricted. You must be authenticated to access it."
                return Response.error(401, "GatedRepo", msg)
            msg = (
                f"Access to {repo_type} {repo.repo_id} is restricted and you are not in the authorized list."
            )
            return Response.error(403, "GatedRepo", msg)
        revision = req.params.get("revision", "main")
        if revision not in ("main", repo.sha):
            return Response.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo


def _entries(repo: FakeRepo) -> dict[str, dict]:
    """Tree entries (files and folders) of the repo, keyed by path, in the Hub's JSON shape."""
    out: dict[str, dict] = {}
    for path, local in repo.files().items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            out.setdefault(
                folder,
                {
                    "type": "directory",
                    "oid": hashlib.sha1(folder.encode()).hexdigest(),
                    "size": 0,
                    "path": folder,
                },
            )
        out[path] = {
            "type": "file",
            "oid": git_blob_oid(local.read_bytes()),
            "size": local.stat().st_size,
            "path": path,
        }
    return dict(sorted(out.items()))


def resolve_file(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, REPO_TYPES[(req.params.get("prefix") or "models")], content=True)
    if isinstance(repo, Response):
        return repo
    local = repo.files().get(req.params["path"])
    if local is None:  # the Hub tells the commit even then: the client caches the miss under it
        return Response.error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": repo.sha})
    data = local.read_bytes()
    headers = {
        "X-Repo-Commit": repo.sha,
        "ETag": f'"{git_blob_oid(data)}"',
        "Content-Type": "application/octet-stream",
    }
    return Response(200, headers, data)


def repo_info(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, REPO_TYPES[req.params["type"]])
    if isinstance(repo, Response):
        return repo
    blobs = req.query.get("blobs", ["false"])[0].lower() == "true"
    siblings = [
        {"rfilename": e["path"], **({"size": e["size"], "blobId": e["oid"]} if blobs else {})}
        for e in _entries(repo).values()
        if e["type"] == "file"
    ]
    info = {
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": repo.sha,
        "lastModified": "2024-01-01T00:00:00.000Z",
        "private": repo.private,
        "gated": "auto" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
    }
    return Response.json(info)


def list_tree(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, REPO_TYPES[req.params["type"]])
    if isinstance(repo, Response):
        return repo
    entries = _entries(repo)
    base = req.params.get("path", "").strip("/")
    if base and entries.get(base, {}).get("type") != "directory":
        return Response.error(404, "EntryNotFound", f"{base} does not exist on main")
    recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
    prefix = f"{base}/" if base else ""
    listed = [
        e
        for path, e in entries.items()
        if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
    ]
    return Response.json(listed)


def paths_info(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, REPO_TYPES[req.params["type"]])
    if isinstance(repo, Response):
        return repo
    entries = _entries(repo)
    wanted = parse_qs(req.body.decode())
    return Response.json([entries[p] for p in wanted.get("paths", []) if p in entries])


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive handler threads must not block shutdown
    hub: FakeHub


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response sets Content-Length
    timeout = 30  # idle keep-alive connections end on their own
    server: _Server

    def _handle(self) -> None:
        hub = self.server.hub
        auth = self.headers.get("Authorization", "")
        token = (auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else "") or None
        split = urlsplit(self.path)
        path = unquote(split.path)
        hub.requests.append((self.command, path, bool(token)))  # never the token itself
        request = Request(self.command, path, {}, parse_qs(split.query), self.headers, self._body(), token)
        try:
            response = hub.dispatch(request, split.path)
        except Exception as exc:  # a handler bug: answer 501, which the client does not retry (5xx would)
            traceback.print_exc()
            response = Response.error(501, None, f"fake hub handler error: {type(exc).__name__}: {exc}")
        self.send_response(response.status)
        for name, value in {**response.headers, "Content-Length": str(len(response.body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b""  # chunked (httpx sends streamed uploads this way): size line, data, CRLF, ..., 0
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # optional trailers
            pass
        return body

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet


def point_hf_client_at(endpoint: str, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``huggingface_hub`` (and ``datasets``) in this process use ``endpoint``, a cache and token file
    under ``hf_home``, no ambient token, no telemetry, online mode. Child processes get it via the env vars.

    ``huggingface_hub.constants`` reads the env at import time, and a few modules copied values from it:
    ``hf_api.api`` (the ``HfApi()`` behind module-level ``list_repo_files``/``repo_info``...) froze
    ``endpoint``, ``utils._http._HUB_ORIGINS`` (hosts auth may be forwarded to on redirect) and the cache
    manager/assets helpers copied the cache paths. ``datasets.config`` copied ``HF_ENDPOINT`` likewise.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _cache_assets, _cache_manager, _http

    try:  # import before touching the env: its import-time copies must keep the real values once restored
        import datasets.config as ds_config
    except ImportError:
        ds_config = None

    hf_home.mkdir(parents=True, exist_ok=True)
    hub_cache, assets_cache, token_path = hf_home / "hub", hf_home / "assets", hf_home / "token"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets_cache),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        "HF_TOKEN_PATH": str(token_path),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
    }
    no_proxy = ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get("NO_PROXY")]))
    env["NO_PROXY"] = env["no_proxy"] = no_proxy  # loopback must never go through an ambient proxy
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_OIDC_ID_TOKEN",
        "HUGGINGFACE_CO_STAGING",
        "HUGGINGFACE_HUB_CACHE",
    ):
        monkeypatch.delenv(name, raising=False)

    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(assets_cache),
        "HUGGINGFACE_ASSETS_CACHE": str(assets_cache),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(token_path),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", str(assets_cache))

    if ds_config is not None:
        monkeypatch.setattr(ds_config, "HF_ENDPOINT", endpoint)
        monkeypatch.setattr(
            ds_config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(ds_config, "HF_DATASETS_OFFLINE", False)
        monkeypatch.setattr(ds_config, "HF_DATASETS_CACHE", hf_home / "datasets")

    _http.close_session()  # the shared httpx2 client is rebuilt and reads the env (NO_PROXY) afresh


@pytest.fixture(name="hub_server")
def hub_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A started ``FakeHub`` that ``huggingface_hub`` talks to by default; the HF cache lives in
    ``tmp_path / "hf_home"``. Register repos with ``hub_server.add_repo(...)``."""
    from huggingface_hub.utils import _http

    hub = FakeHub().start()
    try:
        point_hf_client_at(hub.url, tmp_path / "hf_home", monkeypatch)
        yield hub
    finally:
        _http.close_session()  # drop pooled keep-alive connections to this server
        hub.stop()
