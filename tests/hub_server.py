"""A fake Hugging Face Hub served over real HTTP on 127.0.0.1, for tests.

The real ``huggingface_hub`` client (``hf_hub_download``, ``snapshot_download``, ``HfApi().repo_info`` and
friends, ``create_repo``, ``create_commit``/``upload_folder``, ``create_branch``) talks to it, and so do
``transformers``/``peft`` ``from_pretrained``, ``datasets`` and child processes: use the ``hub_server``
fixture.

It reaches them only through configuration huggingface_hub documents, never through its private state.
``start_session_hub()`` (called at the top of tests/conftest.py, before anything imports huggingface_hub)
opens one pair of loopback ports for the whole session and exports environment variables, because
huggingface_hub (``constants``), ``datasets.config`` and ``transformers`` read them once, at import:

- ``HF_ENDPOINT``: the server. huggingface_hub derives from it the hosts it trusts with the token on
  redirects, ``datasets`` its download URLs; LFS storage is on a second port, another origin, like the CDN.
- ``HF_HOME``, and under it ``HF_HUB_CACHE``, ``HF_ASSETS_CACHE``, ``HF_XET_CACHE``, ``HF_DATASETS_CACHE``,
  ``HF_TOKEN_PATH`` (named explicitly so a user's own values cannot win): never the user's
  ``~/.cache/huggingface`` or login. ``HF_HOME`` is a symlink that the fixture points at
  ``tmp_path / "hf_home"`` for each test (an empty folder otherwise); the client resolves the cache
  folder at every call, so each test starts with an empty cache and no token file. ``HF_MODULES_CACHE``
  stays fixed (transformers puts it on ``sys.path`` at import).
- ``HF_HUB_DISABLE_XET=1`` (the server speaks the legacy LFS transfer), ``HF_HUB_DISABLE_TELEMETRY=1``,
  ``HF_HUB_DISABLE_UPDATE_CHECK=1``, ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` and ``TRANSFORMERS_OFFLINE``
  ``=0``, ``NO_PROXY`` with the loopback; ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, ``HF_OIDC_*``,
  ``HUGGINGFACE_CO_STAGING`` and the legacy cache variables are removed (tests set ``HF_TOKEN`` themselves).

Tests are isolated inside the server: each gets a fresh ``FakeHub`` (repos, users, faults, routes, request
log, LFS storage) whose repos' first commits have shas of their own, and fsspec's cached ``HfFileSystem``
instances are dropped (``HfFileSystem.clear_instance_cache()``) around it. Outside ``hub_server`` tests the
server answers from an empty hub. ``FakeHub().start()`` serves a hub on ports of its own instead.

Repos are registered with ``FakeHub.add_repo`` (a local folder, read live as the repo's first commit, so
tests may edit it) or created by the client. Each repo has a commit history and branches; ``main`` starts at
a fixed fake commit. A revision is a branch name or the sha of one of the repo's commits; anything else is
``RevisionNotFound``. Read routes:

- ``HEAD|GET /{datasets/|spaces/|}{repo_id}/resolve/{revision}/{path}``: file body, with ``X-Repo-Commit``,
  ``ETag`` (the git blob oid for regular files, as the Hub sends) and ``Content-Length``. LFS files (pushed
  ``*.safetensors``, binaries...) answer like the Hub: a 302 to ``/lfs-objects/{sha256}`` on a second port
  (``storage_url``: another origin, like the Hub's CDN) with ``X-Linked-Etag``/``X-Linked-Size``.
  Folder-backed repos serve every file as a regular one.
- ``GET /api/{models|datasets|spaces}/{repo_id}[/revision/{revision}]``: repo info (``sha``, ``siblings``...).
- ``GET /api/{...}/{repo_id}/tree/{revision}[/{path}]?recursive=``: tree listing (one page, no ``Link``).
- ``POST /api/{...}/{repo_id}/paths-info/{revision}``: info on the form-posted ``paths``.
- ``GET /api/{...}/{repo_id}/refs`` and ``/commits/{revision}``: branches, and the history (newest first).

Write routes (the commit protocol of ``HfApi.create_commit`` with the legacy LFS transfer; Xet is off):

- ``POST /api/repos/create`` (409 if it exists), ``POST /api/validate-yaml`` (README front matter),
  ``GET /api/whoami-v2`` (the token's user and orgs),
- ``POST /api/{...}/{repo_id}/preupload/{revision}``: regular or LFS upload mode per file, and its remote oid,
- ``POST /{datasets/|spaces/|}{repo_id}.git/info/lfs/objects/batch`` then ``PUT /lfs-objects/{sha256}``
  (unauthenticated, like a presigned storage URL; the body must hash to the oid),
- ``POST /api/{...}/{repo_id}/commit/{branch}``: ndjson header + files/lfsFiles/deletions, applied atomically:
  either every operation lands in one new commit or the branch does not move,
- ``POST /api/{...}/{repo_id}/branch/{branch}`` (from ``startingPoint``, 409 if it exists).

Writing needs a user: ``FakeHub.add_user(name, token, orgs)``. No or unknown token: 401 (``Invalid
credentials``); a known token outside the repo's namespace: 403; a private repo it cannot see: 404.
``FakeHub.fail(method, pattern, status, times)`` makes matching requests fail first (outages, for retry tests).

Errors carry ``X-Error-Code``/``X-Error-Message`` like the Hub's, which is what the client maps to its
exceptions: ``RepoNotFound`` (404; 401 for a private repo without token), ``GatedRepo`` (file content of a
gated repo: 401 without token, 403 with a token not in the repo's ``tokens``), ``RevisionNotFound`` and
``EntryNotFound`` (404). Repo metadata and listings of gated repos stay public, as on the Hub.

``FakeHub.requests`` logs ``(method, path, had_auth)``; token values are never logged nor echoed. To add
routes, call ``FakeHub.add_route`` with a handler ``(hub, Request) -> Response`` (built-in routes match first).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO_ID = r"(?P<repo_id>[^/]+(?:/[^/]+)?)"
_API = r"/api/(?P<type>models|datasets|spaces)/" + _REPO_ID
_PREFIX = r"/(?:(?P<prefix>datasets|spaces)/)?"
FAKE_DATE = "2024-01-01T00:00:00.000Z"
# What the Hub stores in LFS: the patterns of the .gitattributes it creates, binary content, files over 10 MB.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".onnx",
                ".model", ".npy", ".npz", ".parquet", ".arrow", ".zip", ".tar", ".gz", ".tgz", ".zst", ".7z")  # fmt: skip
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
REPO_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_HUB_SEEDS = itertools.count()  # one per FakeHub: see FakeRepo.seed


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """One file of a commit. LFS files are listed and served the way the Hub does for them."""

    data: bytes = field(repr=False)
    lfs: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob oid (of the pointer file, for LFS files), as in tree listings."""
        return git_blob_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        """What the Hub sends as (linked) ETag and preupload's ``oid``: sha256 for LFS, git oid otherwise."""
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    sha: str
    title: str
    message: str = ""
    parent: str | None = None
    author: str | None = None
    files: dict[str, Blob] | None = field(default=None, repr=False)  # None: the repo folder, read live


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    folder: Path | None  # None: a repo created through the API
    gated: bool = False
    private: bool = False
    tokens: frozenset[str] = field(default=frozenset(), repr=False)  # tokens allowed in (gated/private)
    commits: dict[str, Commit] = field(default_factory=dict, repr=False)
    branches: dict[str, str] = field(default_factory=dict)
    # Which FakeHub made the repo: its part of the first commit's sha, so the same repo id registered in two
    # tests gets two shas and no client cache keyed by commit (snapshots, fsspec listings) carries over.
    seed: str = ""

    def __post_init__(self) -> None:
        if not self.commits:
            sha = hashlib.sha1(f"fake-hub:{self.seed}:{self.repo_type}:{self.repo_id}".encode()).hexdigest()
            files = None if self.folder is not None else {".gitattributes": Blob(GITATTRIBUTES.encode())}
            self.commits[sha] = Commit(sha, "initial commit", files=files)
            self.branches["main"] = sha

    @property
    def sha(self) -> str:
        """Head commit of ``main``."""
        return self.branches["main"]

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def commit(self, revision: str = "main") -> Commit | None:
        """The commit a revision (branch name or commit sha) points at, or None."""
        return self.commits.get(self.branches.get(revision, revision))

    def files(self, revision: str = "main") -> dict[str, Blob]:
        """Repo path (posix) -> content at ``revision``; a folder-backed commit is read at call time."""
        commit = self.commit(revision)
        if commit is None:
            raise KeyError(revision)
        if commit.files is not None:
            return dict(sorted(commit.files.items()))
        assert self.folder is not None
        found = {p.relative_to(self.folder).as_posix(): p for p in self.folder.rglob("*") if p.is_file()}
        return {k: Blob(found[k].read_bytes()) for k in sorted(found) if ".git" not in k.split("/")}

    def history(self, revision: str = "main") -> list[Commit]:
        """Commits reachable from ``revision``, newest first."""
        out, commit = [], self.commit(revision)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


@dataclass(frozen=True)
class FakeUser:
    name: str
    token: str = field(repr=False)
    orgs: frozenset[str] = frozenset()


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int | None  # None: every time


@dataclass
class Request:
    method: str
    path: str  # decoded, without query string
    params: dict[str, str]  # named groups of the route pattern, decoded
    query: dict[str, list[str]]
    headers: Message = field(repr=False)
    body: bytes = field(repr=False)
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


class FakeHub:
    """The state of one fake Hub (repos, users, LFS storage, injected faults, request log) and its routes.

    The ``hub_server`` fixture gives each test a fresh one, served by the session's sockets (``HubSession``);
    ``start()``/``stop()`` serve one on sockets of its own instead (the client is not pointed at those).
    """

    def __init__(self) -> None:
        self.seed = str(next(_HUB_SEEDS))
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str, bool]] = []
        self.routes: list[Route] = []
        self.faults: list[Fault] = []
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content: the LFS storage behind every repo
        self._users: dict[str, FakeUser] = {}  # token -> user
        self._lock = threading.RLock()  # the server is threaded: repo state changes under this lock
        self._sockets: _Sockets | None = None  # what serves this hub, once started or served by a session
        self._owns_sockets = False
        resolve = _PREFIX + _REPO_ID + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)"
        self.add_route(("GET", "HEAD"), resolve, resolve_file)
        self.add_route(("GET", "HEAD"), r"/lfs-objects/(?P<oid>[0-9a-f]{64})", get_lfs_object)
        self.add_route(("PUT",), r"/lfs-objects/(?P<oid>[0-9a-f]{64})", put_lfs_object)
        self.add_route(("POST",), _PREFIX + _REPO_ID + r"\.git/info/lfs/objects/batch", lfs_batch)
        self.add_route(("POST",), r"/api/repos/create", create_repo)
        self.add_route(("GET",), r"/api/whoami-v2", whoami)
        self.add_route(("POST",), r"/api/validate-yaml", validate_yaml)
        self.add_route(("GET",), _API + r"/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", list_tree)
        self.add_route(("POST",), _API + r"/paths-info/(?P<revision>[^/]+)", paths_info)
        self.add_route(("POST",), _API + r"/preupload/(?P<revision>[^/]+)", preupload)
        self.add_route(("POST",), _API + r"/commit/(?P<revision>[^/]+)", commit)
        self.add_route(("POST",), _API + r"/branch/(?P<branch>[^/]+)", create_branch)
        self.add_route(("GET",), _API + r"/refs", list_refs)
        self.add_route(("GET",), _API + r"/commits/(?P<revision>[^/]+)", list_commits)
        self.add_route(
            ("GET",), _API + r"(?:/revision/(?P<revision>[^/]+))?", repo_info
        )  # last: most generic

    # -- setup ---------------------------------------------------------------------------------------
    def add_route(self, methods: tuple[str, ...], pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``methods`` on paths fully matching ``pattern`` (first match wins)."""
        self.routes.append(Route(tuple(methods), re.compile(pattern), handler))

    def add_repo(
        self,
        repo_id: str,
        folder: str | Path | None,
        repo_type: str = "dataset",
        gated: bool = False,
        private: bool = False,
        tokens: set[str] | list[str] | None = None,
    ) -> FakeRepo:
        """Serve ``folder`` as the first commit of a repo (``None``: a repo holding only ``.gitattributes``)."""
        if repo_type not in REPO_TYPES.values():
            raise ValueError(f"unknown repo_type {repo_type!r}")
        path = Path(folder) if folder is not None else None
        repo = FakeRepo(repo_id, repo_type, path, gated, private, frozenset(tokens or ()), seed=self.seed)
        with self._lock:
            self.repos[(repo_type, repo_id)] = repo
        return repo

    def add_user(self, name: str, token: str, orgs: Iterable[str] = ()) -> FakeUser:
        """A user who may write to their own namespace and to ``orgs`` with ``token``."""
        user = FakeUser(name, token, frozenset(orgs))
        self._users[token] = user
        return user

    def user(self, token: str | None) -> FakeUser | None:
        return self._users.get(token) if token else None

    def can_write(self, token: str | None, namespace: str) -> bool:
        user = self.user(token)
        return user is not None and (namespace == user.name or namespace in user.orgs)

    def fail(self, method: str, pattern: str, status: int = 500, times: int | None = 1) -> None:
        """Answer the next ``times`` (None: all) ``method`` requests on paths matching ``pattern`` with
        ``status`` before any route sees them: a Hub outage, for retry tests."""
        with self._lock:
            self.faults.append(Fault(method, re.compile(pattern), status, times))

    @property
    def url(self) -> str:
        assert self._sockets is not None, "server not started"
        return self._sockets.url

    @property
    def storage_url(self) -> str:
        """Where LFS content is uploaded to and downloaded from: a second port, so a different origin that
        the client neither follows HEAD redirects to nor sends the token to, as with the Hub's storage."""
        assert self._sockets is not None, "server not started"
        return self._sockets.storage_url

    def start(self) -> FakeHub:
        """Serve this hub on two new loopback ports of its own (``hub_server`` uses the session's)."""
        self._sockets, self._owns_sockets = _Sockets(), True
        self._sockets.serve(self)
        return self

    def stop(self) -> None:
        """Close the ports ``start`` opened; a hub served by the session only lets go of them."""
        if self._sockets is not None and self._owns_sockets:
            self._sockets.close()
        self._sockets, self._owns_sockets = None, False

    # -- request handling ------------------------------------------------------------------------------
    def dispatch(self, request: Request, raw_path: str) -> Response:
        if (fault := self._take_fault(request.method, raw_path)) is not None:
            return Response.error(fault.status, None, f"fake hub: injected failure ({fault.status})")
        for route in self.routes:
            match = route.pattern.fullmatch(raw_path)
            if match and request.method in route.methods:
                request.params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                return route.handler(self, request)
        return Response.error(404, None, f"fake hub has no route for {request.method} {request.path}")

    def _take_fault(self, method: str, raw_path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.pattern.search(unquote(raw_path)):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def get_repo(self, req: Request, repo_type: str, *, content: bool = False) -> FakeRepo | Response:
        """The repo named by the request, or the error response the Hub would give for it."""
        repo = self.repos.get((repo_type, req.params["repo_id"]))
        allowed = repo is not None and (
            (req.token is not None and req.token in repo.tokens) or self.can_write(req.token, repo.namespace)
        )
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
        if repo.commit(revision) is None:
            return Response.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    def get_writable_repo(self, req: Request, repo_type: str) -> FakeRepo | Response:
        """Like ``get_repo``, for a request that writes: it needs a known token allowed in the namespace."""
        if self.user(req.token) is None:
            return Response.error(401, None, "Invalid credentials in Authorization header")
        repo = self.get_repo(req, repo_type)
        if isinstance(repo, Response):
            return repo
        if not self.can_write(req.token, repo.namespace):
            msg = f"You don't have write access to {repo_type} {repo.repo_id}"
            return Response.error(403, None, msg)
        return repo


def _repo_type(req: Request) -> str:
    if "type" in req.params:
        return REPO_TYPES[req.params["type"]]
    return REPO_TYPES[req.params.get("prefix") or "models"]


# -- read routes ------------------------------------------------------------------------------------------
def _entries(files: dict[str, Blob]) -> dict[str, dict]:
    """Tree entries (files and folders) of a commit, keyed by path, in the Hub's JSON shape."""
    out: dict[str, dict] = {}
    for path, blob in files.items():
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
        out[path] = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
        if blob.lfs:
            out[path]["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
    return dict(sorted(out.items()))


def resolve_file(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, _repo_type(req), content=True)
    if isinstance(repo, Response):
        return repo
    revision = req.params["revision"]
    sha = repo.commit(revision).sha
    blob = repo.files(revision).get(req.params["path"])
    if blob is None:  # the Hub tells the commit even then: the client caches the miss under it
        return Response.error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": sha})
    if blob.lfs:  # the Hub redirects LFS content to its storage, telling the content's hash and size
        hub.lfs_objects.setdefault(blob.sha256, blob.data)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{blob.oid}"',
            "X-Linked-Etag": f'"{blob.sha256}"',
            "X-Linked-Size": str(len(blob.data)),
            "Location": f"{hub.storage_url}/lfs-objects/{blob.sha256}",
        }
        return Response(302, headers)
    headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.oid}"', "Content-Type": "application/octet-stream"}
    return Response(200, headers, blob.data)


def get_lfs_object(hub: FakeHub, req: Request) -> Response:
    data = hub.lfs_objects.get(req.params["oid"])
    if data is None:
        return Response.error(404, None, "LFS object not found")
    headers = {"ETag": f'"{req.params["oid"]}"', "Content-Type": "application/octet-stream"}
    return Response(200, headers, data)


def repo_info(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    revision = req.params.get("revision", "main")
    blobs = req.query.get("blobs", ["false"])[0].lower() == "true"
    siblings = []
    for path, blob in repo.files(revision).items():
        sibling: dict = {"rfilename": path}
        if blobs:
            sibling |= {"size": len(blob.data), "blobId": blob.oid}
            if blob.lfs:
                sibling["lfs"] = {
                    "sha256": blob.sha256,
                    "size": len(blob.data),
                    "pointerSize": len(blob.pointer),
                }
        siblings.append(sibling)
    info = {
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": repo.commit(revision).sha,
        "lastModified": FAKE_DATE,
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
    repo = hub.get_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    entries = _entries(repo.files(req.params["revision"]))
    base = req.params.get("path", "").strip("/")
    if base and entries.get(base, {}).get("type") != "directory":
        return Response.error(404, "EntryNotFound", f"{base} does not exist on {req.params['revision']}")
    recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
    prefix = f"{base}/" if base else ""
    listed = [
        e
        for path, e in entries.items()
        if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
    ]
    return Response.json(listed)


def paths_info(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    entries = _entries(repo.files(req.params["revision"]))
    wanted = parse_qs(req.body.decode())
    return Response.json([entries[p] for p in wanted.get("paths", []) if p in entries])


def list_refs(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    branches = [
        {"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha}
        for name, sha in repo.branches.items()
    ]
    return Response.json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})


def list_commits(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    history = [
        {
            "id": c.sha,
            "title": c.title,
            "message": c.message,
            "authors": [{"user": c.author}] if c.author else [],
            "date": FAKE_DATE,
        }
        for c in repo.history(req.params["revision"])
    ]
    return Response.json(history)


# -- write routes -----------------------------------------------------------------------------------------
def create_repo(hub: FakeHub, req: Request) -> Response:
    user = hub.user(req.token)
    if user is None:
        return Response.error(401, None, "Invalid credentials in Authorization header")
    body = json.loads(req.body)
    repo_type = body.get("type") or "model"
    namespace = body.get("organization") or user.name
    repo_id = f"{namespace}/{body['name']}"
    if not REPO_ID_RE.fullmatch(repo_id):
        return Response.error(400, None, f"Invalid repo name {repo_id!r}")
    if not hub.can_write(req.token, namespace):
        msg = f'You don\'t have the rights to create a {repo_type} under the namespace "{namespace}"'
        return Response.error(403, None, msg)
    url = f"{hub.url}/{URL_PREFIXES[repo_type]}{repo_id}"
    with hub._lock:
        if (
            repo_type,
            repo_id,
        ) in hub.repos:  # the Hub still tells the url (create_repo(exist_ok=True) reads it)
            msg = f"You already created this {repo_type} repo"
            return Response.json({"error": msg, "url": url}, 409, **{"X-Error-Message": msg})
        private = body.get("visibility") == "private" or bool(body.get("private"))
        hub.add_repo(repo_id, None, repo_type, private=private)
    return Response.json({"url": url, "name": repo_id, "id": repo_id})


def whoami(hub: FakeHub, req: Request) -> Response:
    user = hub.user(req.token)
    if user is None:
        return Response.error(401, None, "Invalid credentials in Authorization header")
    orgs = [{"type": "org", "name": org} for org in sorted(user.orgs)]
    auth = {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}}
    return Response.json({"type": "user", "name": user.name, "orgs": orgs, "auth": auth})


def validate_yaml(hub: FakeHub, req: Request) -> Response:
    """Front matter checks the Hub makes before a README is committed (a subset): valid YAML mapping,
    ``base_model`` naming Hub repo ids (never local paths), ``model-index`` a list of named results."""
    content = json.loads(req.body)["content"]
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
    errors = []
    try:
        meta = yaml.safe_load(match.group(1)) if match else {}
    except yaml.YAMLError as exc:
        meta, errors = {}, [f"Invalid YAML: {exc}"]
    if not isinstance(meta, dict):
        meta, errors = {}, ["Metadata must be a YAML mapping"]
    bases = meta.get("base_model") or []
    for base in [bases] if isinstance(bases, str) else bases:
        if not (isinstance(base, str) and REPO_ID_RE.fullmatch(base)):
            errors.append(f'"base_model" must be a Hub model id, got {base!r}')
    index = meta.get("model-index")
    if index is not None and not (
        isinstance(index, list)
        and all(isinstance(m, dict) and m.get("name") and isinstance(m.get("results"), list) for m in index)
    ):
        errors.append('"model-index" must be a list of {name, results}')
    if errors:
        return Response.json({"errors": [{"message": e} for e in errors], "warnings": []}, 400)
    return Response.json({"errors": [], "warnings": []})


def preupload(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_writable_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    current = repo.files(req.params["revision"])
    files = []
    for f in json.loads(req.body)["files"]:
        sample = base64.b64decode(f["sample"])
        lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE or b"\0" in sample
        remote = current.get(f["path"])
        files.append(
            {
                "path": f["path"],
                "uploadMode": "lfs" if lfs else "regular",
                "shouldIgnore": False,
                "oid": remote.etag if remote is not None else None,
            }
        )
    return Response.json({"files": files, "commitOid": repo.commit(req.params["revision"]).sha})


def lfs_batch(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_writable_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    objects = []
    for obj in json.loads(req.body)["objects"]:
        entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
        if obj["oid"] not in hub.lfs_objects:  # stored content is never uploaded twice
            entry["actions"] = {
                "upload": {"href": f"{hub.storage_url}/lfs-objects/{obj['oid']}", "header": {}}
            }
        objects.append(entry)
    return Response.json({"transfer": "basic", "objects": objects})


def put_lfs_object(hub: FakeHub, req: Request) -> Response:
    if hashlib.sha256(req.body).hexdigest() != req.params["oid"]:
        return Response.error(400, None, "Uploaded content does not match its sha256 oid")
    with hub._lock:
        hub.lfs_objects[req.params["oid"]] = req.body
    return Response(200, {"ETag": f'"{req.params["oid"]}"'})


def commit(hub: FakeHub, req: Request) -> Response:
    """Apply an ndjson commit to a branch: all operations in one new commit, or an error and no change."""
    repo = hub.get_writable_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    branch = req.params["revision"]
    if branch not in repo.branches:
        return Response.error(400, None, f"Cannot commit to {branch!r}: only branches take commits")
    if req.query.get("create_pr"):
        return Response.error(400, None, "fake hub does not emulate pull requests")
    lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        return Response.error(400, None, "A commit starts with a header line")
    header = lines[0]["value"]
    with hub._lock:
        parent = repo.branches[branch]
        if header.get("parentCommit") not in (None, parent):
            return Response.error(412, None, "A commit has happened since. Please refresh and try again.")
        files = repo.files(parent)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                files[path] = Blob(base64.b64decode(value["content"]))
            elif key == "lfsFile":
                data = hub.lfs_objects.get(value["oid"])
                if data is None:
                    return Response.error(422, None, f"LFS object of {path} was never uploaded")
                files[path] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    return Response.error(
                        404, "EntryNotFound", f"A file with this name doesn't exist: {path}"
                    )
            elif key == "deletedFolder":
                files = {p: b for p, b in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                return Response.error(400, None, f"Unknown commit operation {key!r}")
        state = json.dumps([parent, header, sorted((p, b.oid) for p, b in files.items()), len(repo.commits)])
        sha = hashlib.sha1(state.encode()).hexdigest()
        author = hub.user(req.token).name
        repo.commits[sha] = Commit(
            sha, header["summary"], header.get("description", ""), parent, author, files
        )
        repo.branches[branch] = sha
    url = f"{hub.url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}/commit/{sha}"
    return Response.json({"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})


def create_branch(hub: FakeHub, req: Request) -> Response:
    repo = hub.get_writable_repo(req, _repo_type(req))
    if isinstance(repo, Response):
        return repo
    start = json.loads(req.body or b"{}").get("startingPoint") or "main"
    with hub._lock:
        source = repo.commit(start)
        if source is None:
            return Response.error(404, "RevisionNotFound", f"Invalid rev id: {start}")
        if req.params["branch"] in repo.branches:
            return Response.error(409, None, "Reference already exists")
        repo.branches[req.params["branch"]] = source.sha
    return Response.json({})


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


class _Sockets:
    """The two listening ports that serve a ``FakeHub``: the Hub API and, as another origin, LFS storage."""

    def __init__(self) -> None:
        self.api = _Server(("127.0.0.1", 0), _RequestHandler)
        self.storage = _Server(("127.0.0.1", 0), _RequestHandler)
        for name, server in (("fake-hub", self.api), ("fake-hub-storage", self.storage)):
            kwargs = {"poll_interval": 0.05}
            threading.Thread(target=server.serve_forever, kwargs=kwargs, daemon=True, name=name).start()

    @property
    def url(self) -> str:
        host, port = self.api.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def storage_url(self) -> str:
        host, port = self.storage.server_address[:2]
        return f"http://{host}:{port}"

    def serve(self, hub: FakeHub) -> None:
        """Answer every request from now on from ``hub``'s state and routes."""
        self.api.hub = self.storage.hub = hub
        hub._sockets = self

    def close(self) -> None:
        for server in (self.api, self.storage):
            server.shutdown()
            server.server_close()


# Public huggingface_hub configuration the session sets: read once, when huggingface_hub (and datasets,
# transformers) is first imported, and inherited by every child process.
SESSION_FLAGS = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_DISABLE_XET": "1",  # the fake Hub speaks the legacy LFS transfer only
    "HF_HUB_OFFLINE": "0",
    "HF_DATASETS_OFFLINE": "0",
    "TRANSFORMERS_OFFLINE": "0",
}
# Ambient settings that would bring in the user's token or send the client elsewhere.
AMBIENT_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "HUGGINGFACE_CO_STAGING",
    "HUGGINGFACE_HUB_CACHE",
    "HUGGINGFACE_ASSETS_CACHE",
)


class HubSession:
    """One pytest session's loopback Hub: its sockets, the environment pointing huggingface_hub at them, and
    the HF home link that each ``hub_server`` test points at a folder of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "hf_home"  # a symlink: HF_HOME and every HF cache and token path lie under it
        self.idle_home = root / "idle-home"  # where it points outside ``hub_server`` tests
        self.sockets = _Sockets()
        self.serve(FakeHub(), self.idle_home)

    @property
    def url(self) -> str:
        return self.sockets.url

    def environment(self) -> dict[str, str]:
        """The env vars that point huggingface_hub, datasets, transformers and peft at this session."""
        home = str(self.home)
        no_proxy = ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get("NO_PROXY")]))
        return {
            "HF_ENDPOINT": self.url,
            "HF_HOME": home,  # named explicitly below too, so a user's HF_HUB_CACHE cannot win
            "HF_HUB_CACHE": os.path.join(home, "hub"),
            "HF_ASSETS_CACHE": os.path.join(home, "assets"),
            "HF_XET_CACHE": os.path.join(home, "xet"),
            "HF_DATASETS_CACHE": os.path.join(home, "datasets"),
            "HF_TOKEN_PATH": os.path.join(home, "token"),
            # transformers puts this folder on sys.path at import time: a fixed one, not behind the link
            "HF_MODULES_CACHE": str(self.root / "modules"),
            **SESSION_FLAGS,
            "NO_PROXY": no_proxy,  # loopback must never go through an ambient proxy
            "no_proxy": no_proxy,
        }

    def serve(self, hub: FakeHub, home: Path) -> None:
        """Answer requests from ``hub`` and keep HF caches and the token file in ``home`` from now on.

        The link is replaced atomically (``os.replace``), so this process and its children see the whole
        HF home switch at once; huggingface_hub keeps reading the same configured paths.
        """
        home.mkdir(parents=True, exist_ok=True)
        self.sockets.serve(hub)
        staged = self.home.with_name(f".{self.home.name}.next")
        staged.unlink(missing_ok=True)
        staged.symlink_to(home.resolve(), target_is_directory=True)
        os.replace(staged, self.home)

    def close(self) -> None:
        self.sockets.close()
        shutil.rmtree(self.root, ignore_errors=True)


_session: HubSession | None = None


def start_session_hub() -> HubSession:
    """Start this process's loopback Hub and export the env that points huggingface_hub at it (once).

    Call it before anything imports huggingface_hub, which reads that configuration at import time:
    tests/conftest.py does, at its top. Child processes inherit the env and reach the same server.
    """
    global _session
    if _session is None:
        if "huggingface_hub" in sys.modules:
            raise RuntimeError(
                "huggingface_hub was imported before the loopback Hub was configured, so it would keep the "
                "ambient HF_ENDPOINT/HF_HOME. Call tests.hub_server.start_session_hub() first (at the top of "
                "tests/conftest.py, before importing vlsafe or any Hugging Face library)."
            )
        _session = HubSession(Path(tempfile.mkdtemp(prefix="vlsafe-hub-")))
        os.environ.update(_session.environment())
        for name in AMBIENT_VARIABLES:
            os.environ.pop(name, None)
        atexit.register(_session.close)
    return _session


def _configured_session() -> HubSession:
    """The started session, checked against what huggingface_hub actually read."""
    from huggingface_hub import constants

    if _session is None or constants.ENDPOINT != _session.url:
        raise RuntimeError(
            f"huggingface_hub talks to {constants.ENDPOINT}, not to the loopback Hub: "
            "tests.hub_server.start_session_hub() must run before huggingface_hub is first imported "
            "(tests/conftest.py calls it at its top)."
        )
    return _session


@pytest.fixture(name="hub_server")
def hub_server(tmp_path: Path) -> Iterator[FakeHub]:
    """A fresh, empty ``FakeHub`` that huggingface_hub (and transformers, peft, datasets, child processes)
    talks to by default, with an HF home of its own (caches, token file) in ``tmp_path / "hf_home"``.
    Register repos with ``hub_server.add_repo(...)``."""
    from huggingface_hub import HfFileSystem

    session = _configured_session()
    hub = FakeHub()
    HfFileSystem.clear_instance_cache()  # fsspec keeps instances (and their listings) per endpoint+token
    session.serve(hub, tmp_path / "hf_home")
    try:
        yield hub
    finally:
        session.serve(FakeHub(), session.idle_home)  # late requests meet an empty Hub, not this test's
        HfFileSystem.clear_instance_cache()
