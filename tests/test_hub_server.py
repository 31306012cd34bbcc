"""The fake Hub in tests/hub_server.py, driven by the real huggingface_hub client over loopback HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    constants,
    get_token,
    hf_hub_download,
    list_repo_files,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import FakeHub, Response
from tests.hub_server import hub_server as _hub_server  # noqa: F401  (registers the `hub_server` fixture)

ALLOWED = "hf_fake_allowed_0123456789"
WRONG = "hf_fake_wrong_9876543210"


def _folder(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def dataset(hub_server: FakeHub, tmp_path: Path):
    files = {"README.md": "# ds\n", "data/train.jsonl": '{"a": 1}\n', "data/images/x.txt": "pixels"}
    return hub_server.add_repo("org/ds", _folder(tmp_path / "ds", files), repo_type="dataset")


def _calls(hub: FakeHub, method: str, suffix: str) -> list[tuple[str, str, bool]]:
    return [r for r in hub.requests if r[0] == method and r[1].endswith(suffix)]


def test_client_is_pointed_at_server_and_isolated(hub_server: FakeHub, tmp_path: Path) -> None:
    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"] == hub_server.url
    assert hub_server.url.startswith("http://127.0.0.1:")
    home = tmp_path.resolve() / "hf_home"  # this test's own HF home, behind the configured HF_HOME link
    assert Path(constants.HF_HUB_CACHE).resolve() == home / "hub"
    assert Path(constants.HF_TOKEN_PATH).resolve() == home / "token"
    assert get_token() is None and "HF_TOKEN" not in os.environ  # no token from the machine leaks in
    assert Path(constants.HF_HOME).resolve() != (Path.home() / ".cache" / "huggingface").resolve()


def test_download_dataset_file(hub_server: FakeHub, dataset) -> None:
    path = hf_hub_download("org/ds", "data/train.jsonl", repo_type="dataset")
    assert Path(path).read_text() == '{"a": 1}\n'
    assert Path(path).is_relative_to(Path(constants.HF_HUB_CACHE).resolve())  # the client resolves it
    assert f"/snapshots/{dataset.sha}/data/train.jsonl" in path
    assert ("GET", "/datasets/org/ds/resolve/main/data/train.jsonl", False) in hub_server.requests


def test_download_model_file_and_api(hub_server: FakeHub, tmp_path: Path) -> None:
    repo = hub_server.add_repo("org/tiny", _folder(tmp_path / "m", {"config.json": "{}"}), repo_type="model")
    assert Path(hf_hub_download("org/tiny", "config.json")).read_text() == "{}"
    assert _calls(hub_server, "GET", "/org/tiny/resolve/main/config.json")  # no repo-type prefix for models
    info = HfApi().model_info("org/tiny")
    assert info.sha == repo.sha and [s.rfilename for s in info.siblings] == ["config.json"]
    assert list_repo_files("org/tiny") == ["config.json"]  # module-level HfApi singleton is patched too


def test_repo_info_listing_and_paths_info(hub_server: FakeHub, dataset) -> None:
    api = HfApi()
    info = api.repo_info("org/ds", repo_type="dataset", files_metadata=True)
    assert info.sha == dataset.sha
    assert {s.rfilename: s.size for s in info.siblings}["data/images/x.txt"] == len("pixels")
    assert api.dataset_info("org/ds", revision=dataset.sha).sha == dataset.sha
    assert list_repo_files("org/ds", repo_type="dataset") == [
        "README.md",
        "data/images/x.txt",
        "data/train.jsonl",
    ]
    top = {e.path for e in api.list_repo_tree("org/ds", repo_type="dataset")}
    assert top == {"README.md", "data"}
    sub = {e.path for e in api.list_repo_tree("org/ds", "data", repo_type="dataset")}
    assert sub == {"data/images", "data/train.jsonl"}
    found = api.get_paths_info("org/ds", ["README.md", "nope.txt", "data"], repo_type="dataset")
    assert sorted(e.path for e in found) == ["README.md", "data"]


def test_snapshot_download(hub_server: FakeHub, dataset) -> None:
    folder = Path(snapshot_download("org/ds", repo_type="dataset"))
    assert folder.name == dataset.sha
    got = {p.relative_to(folder).as_posix(): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert got == {"README.md": "# ds\n", "data/train.jsonl": '{"a": 1}\n', "data/images/x.txt": "pixels"}
    assert _calls(hub_server, "GET", "/api/datasets/org/ds/revision/main")
    assert _calls(hub_server, "GET", f"/api/datasets/org/ds/tree/{dataset.sha}")


def test_second_download_hits_cache(hub_server: FakeHub, dataset) -> None:
    first = hf_hub_download("org/ds", "README.md", repo_type="dataset")
    assert len(_calls(hub_server, "GET", "/resolve/main/README.md")) == 1
    hub_server.requests.clear()
    assert hf_hub_download("org/ds", "README.md", repo_type="dataset") == first
    assert _calls(hub_server, "HEAD", "/resolve/main/README.md")  # still checks the revision...
    assert not _calls(hub_server, "GET", "/resolve/main/README.md")  # ...but never refetches the body
    hub_server.requests.clear()
    hf_hub_download("org/ds", "README.md", repo_type="dataset", revision=dataset.sha)
    assert hub_server.requests == []  # pinned to a cached commit: no HTTP at all


def test_gated_repo(hub_server: FakeHub, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "g", {"secret.txt": "hi"})
    hub_server.add_repo("org/gated", folder, gated=True, tokens={ALLOWED})
    with pytest.raises(GatedRepoError) as no_token:
        hf_hub_download("org/gated", "secret.txt", repo_type="dataset")
    assert no_token.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as wrong:
        hf_hub_download("org/gated", "secret.txt", repo_type="dataset", token=WRONG)
    assert wrong.value.response.status_code == 403
    path = hf_hub_download("org/gated", "secret.txt", repo_type="dataset", token=ALLOWED)
    assert Path(path).read_text() == "hi"
    assert HfApi().dataset_info("org/gated").gated == "auto"  # metadata stays public, as on the Hub
    auth = [had_auth for method, p, had_auth in hub_server.requests if p.endswith("/resolve/main/secret.txt")]
    assert auth.count(False) >= 1 and auth.count(True) >= 2


def test_private_repo_is_not_found_without_access(hub_server: FakeHub, tmp_path: Path) -> None:
    hub_server.add_repo("org/priv", _folder(tmp_path / "p", {"a.txt": "x"}), private=True, tokens={ALLOWED})
    for token in (None, WRONG):
        with pytest.raises(RepositoryNotFoundError) as err:
            hf_hub_download("org/priv", "a.txt", repo_type="dataset", token=token)
        assert not isinstance(err.value, GatedRepoError)
    assert Path(hf_hub_download("org/priv", "a.txt", repo_type="dataset", token=ALLOWED)).read_text() == "x"


def test_missing_repo_and_missing_file(hub_server: FakeHub, dataset) -> None:
    with pytest.raises(RepositoryNotFoundError) as err:
        hf_hub_download("org/nope", "README.md", repo_type="dataset")
    assert not isinstance(err.value, GatedRepoError) and err.value.response.status_code == 404
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info("org/nope")
    with pytest.raises(RepositoryNotFoundError):  # right id, wrong repo type
        hf_hub_download("org/ds", "README.md", repo_type="model")
    with pytest.raises(RemoteEntryNotFoundError) as missing:
        hf_hub_download("org/ds", "nope.txt", repo_type="dataset")
    assert not isinstance(missing.value, LocalEntryNotFoundError)


def test_revisions(hub_server: FakeHub, dataset) -> None:
    path = hf_hub_download("org/ds", "README.md", repo_type="dataset", revision=dataset.sha)
    assert Path(path).read_text() == "# ds\n"
    assert _calls(hub_server, "GET", f"/datasets/org/ds/resolve/{dataset.sha}/README.md")
    for revision in ("v9", "0" * 40):
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download("org/ds", "README.md", repo_type="dataset", revision=revision)
    with pytest.raises(RevisionNotFoundError):
        HfApi().dataset_info("org/ds", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download("org/ds", repo_type="dataset", revision="v9")


def test_token_is_sent_but_never_logged(hub_server: FakeHub, dataset) -> None:
    hf_hub_download("org/ds", "README.md", repo_type="dataset", token=ALLOWED)
    HfApi(token=ALLOWED).dataset_info("org/ds")
    assert hub_server.requests and all(had_auth for _, _, had_auth in hub_server.requests)
    assert ALLOWED not in repr(hub_server.requests)
    assert ALLOWED not in repr(dataset) and ALLOWED not in repr(hub_server.repos)


def test_child_process_reaches_this_tests_hub_and_cache(hub_server: FakeHub, dataset, tmp_path: Path) -> None:
    code = (
        "from huggingface_hub import hf_hub_download\n"
        "print(hf_hub_download('org/ds', 'data/train.jsonl', repo_type='dataset'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.read_text() == '{"a": 1}\n' and path.resolve().is_relative_to(tmp_path.resolve() / "hf_home")
    assert ("GET", "/datasets/org/ds/resolve/main/data/train.jsonl", False) in hub_server.requests


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_a_fresh_hub_and_hf_home(hub_server: FakeHub, tmp_path: Path, run: str) -> None:
    """Run twice (either order): whichever runs second sees any state the other one left behind."""
    assert hub_server.repos == {} and hub_server.requests == [] and hub_server.faults == []
    assert hub_server.user("hf_fake_leaked_token") is None and get_token() is None
    assert len(hub_server.routes) == len(FakeHub().routes)  # built-in routes only
    assert not Path(constants.HF_HUB_CACHE).exists()  # a new, empty HF home

    # Leave state behind everywhere: a repo with the same id but other content in each run, a user, a
    # standing fault, an extra route, a logged-in token file, a cached download and an fsspec listing.
    hub_server.add_repo("org/leak", _folder(tmp_path / "leak", {f"{run}.txt": run}))
    hub_server.add_user("leaker", "hf_fake_leaked_token")
    hub_server.fail("GET", r"/never-called", times=None)
    hub_server.add_route(("GET",), r"/extra", lambda hub, req: Response.json(run))
    Path(constants.HF_TOKEN_PATH).write_text("hf_fake_leaked_token")
    assert get_token() == "hf_fake_leaked_token"
    assert Path(hf_hub_download("org/leak", f"{run}.txt", repo_type="dataset")).read_text() == run
    listed = HfFileSystem().ls("datasets/org/leak", detail=False)
    assert [Path(p).name for p in listed] == [f"{run}.txt"]  # not the other run's cached listing


def test_repos_of_different_hubs_get_different_commits() -> None:
    """The same repo id in two tests must not share a commit sha: client caches are keyed by it."""
    first, second = FakeHub().add_repo("org/same", None), FakeHub().add_repo("org/same", None)
    assert first.sha != second.sha
    assert FakeHub().add_repo("org/a", None).sha != FakeHub().add_repo("org/b", None).sha


def test_a_started_hub_serves_on_ports_of_its_own(hub_server: FakeHub) -> None:
    from huggingface_hub.utils import get_session

    own = FakeHub().start()
    try:
        own.add_repo("org/own", None, repo_type="model")
        assert own.url != hub_server.url and own.storage_url != hub_server.storage_url
        assert get_session().get(f"{own.url}/api/models/org/own").json()["id"] == "org/own"
        assert get_session().get(f"{hub_server.url}/api/models/org/own").status_code == 404
    finally:
        own.stop()
    assert hub_server.requests == [("GET", "/api/models/org/own", False)]  # the session's hub: its own log


def test_add_route_extends_the_server(hub_server: FakeHub) -> None:
    from huggingface_hub.utils import get_session

    hub_server.add_route(("POST",), r"/echo-length", lambda hub, req: Response.json(len(req.body)))
    chunked = get_session().post(f"{hub_server.url}/echo-length", content=iter([b"ab", b"cde"]))
    assert chunked.json() == 5  # streamed (chunked) request bodies are read too
    unknown = get_session().get(f"{hub_server.url}/api/whatever")
    assert unknown.status_code == 404 and "no route" in unknown.headers["X-Error-Message"]


# -- write routes ---------------------------------------------------------------------------------------------
WEIGHTS = bytes(range(256)) * 64  # binary: an LFS file


@pytest.fixture
def writer(hub_server: FakeHub) -> HfApi:
    hub_server.add_user("alice", ALLOWED, orgs={"team"})
    return HfApi(token=ALLOWED)


def test_create_repo_needs_a_token_with_rights_on_the_namespace(hub_server: FakeHub, writer: HfApi) -> None:
    url = writer.create_repo("alice/new", private=True)
    assert url.repo_id == "alice/new" and hub_server.repos[("model", "alice/new")].private
    assert writer.create_repo("team/shared", repo_type="dataset").repo_id == "team/shared"
    assert writer.create_repo("alice/new", exist_ok=True).repo_id == "alice/new"
    with pytest.raises(HfHubHTTPError) as exists:
        writer.create_repo("alice/new")
    assert exists.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as other:
        writer.create_repo("bob/x")
    assert other.value.response.status_code == 403
    for token in (WRONG, False):  # an unknown token, and none at all
        with pytest.raises(HfHubHTTPError) as denied:
            HfApi(token=token).create_repo("alice/y")
        assert denied.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):  # private: invisible without the owner's token
        HfApi(token=False).model_info("alice/new")
    assert writer.model_info("alice/new").private
    assert list_repo_files("alice/new", token=ALLOWED) == [".gitattributes"]


def test_commit_regular_and_lfs_files_then_download_them(hub_server: FakeHub, writer: HfApi) -> None:
    writer.create_repo("alice/m")
    info = writer.create_commit(
        "alice/m",
        [
            CommitOperationAdd("config.json", b'{"a": 1}'),
            CommitOperationAdd("model.safetensors", WEIGHTS),
            CommitOperationAdd("sub/notes.txt", b"hi"),
        ],
        commit_message="Add model",
    )
    repo = hub_server.repos[("model", "alice/m")]
    assert info.oid == repo.sha and len(repo.history()) == 2
    files = repo.files()
    assert files["model.safetensors"].lfs and not files["config.json"].lfs
    assert _calls(hub_server, "PUT", "/lfs-objects/" + hashlib.sha256(WEIGHTS).hexdigest())
    assert _calls(hub_server, "POST", "/alice/m.git/info/lfs/objects/batch")

    assert Path(hf_hub_download("alice/m", "model.safetensors")).read_bytes() == WEIGHTS  # via the 302
    folder = Path(snapshot_download("alice/m"))
    assert folder.name == info.oid and (folder / "sub/notes.txt").read_text() == "hi"
    lfs = {f.path: f.lfs for f in writer.list_repo_tree("alice/m", recursive=True) if hasattr(f, "lfs")}
    assert (
        lfs["model.safetensors"].sha256 == hashlib.sha256(WEIGHTS).hexdigest() and lfs["config.json"] is None
    )

    # Unchanged files are skipped (the preupload oids match); a commit of only unchanged files is a no-op.
    hub_server.requests.clear()
    again = writer.create_commit(
        "alice/m",
        [CommitOperationAdd("model.safetensors", WEIGHTS), CommitOperationAdd("config.json", b'{"a": 1}')],
        commit_message="same",
    )
    assert again.oid == info.oid and len(repo.history()) == 2 and not _calls(hub_server, "PUT", "")
    writer.create_commit(
        "alice/m",
        [CommitOperationDelete("sub/"), CommitOperationAdd("config.json", b"{}")],
        commit_message="Delete sub",
    )
    assert list_repo_files("alice/m") == [".gitattributes", "config.json", "model.safetensors"]
    titles = [c.title for c in writer.list_repo_commits("alice/m")]
    assert titles == ["Delete sub", "Add model", "initial commit"]
    old = hf_hub_download("alice/m", "sub/notes.txt", revision=info.oid)  # history stays readable
    assert Path(old).read_text() == "hi"


def test_branches_and_revisions(hub_server: FakeHub, writer: HfApi) -> None:
    writer.create_repo("alice/b")
    writer.create_branch("alice/b", branch="v1")
    writer.create_branch("alice/b", branch="v1", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as exists:
        writer.create_branch("alice/b", branch="v1")
    assert exists.value.response.status_code == 409
    on_branch = writer.create_commit(
        "alice/b", [CommitOperationAdd("a.txt", b"v1")], commit_message="v1", revision="v1"
    )
    assert list_repo_files("alice/b") == [".gitattributes"]  # main did not move
    assert Path(hf_hub_download("alice/b", "a.txt", revision="v1")).read_text() == "v1"
    assert writer.model_info("alice/b", revision="v1").sha == on_branch.oid
    refs = {ref.name: ref.target_commit for ref in writer.list_repo_refs("alice/b").branches}
    assert refs == {"main": hub_server.repos[("model", "alice/b")].sha, "v1": on_branch.oid}
    with pytest.raises(RevisionNotFoundError):
        writer.create_branch("alice/b", branch="v2", revision="nope")


def test_writes_are_refused_without_rights_and_leave_the_repo_alone(
    hub_server: FakeHub, writer: HfApi, dataset
) -> None:
    head = dataset.sha
    with pytest.raises(HfHubHTTPError) as denied:  # org/ds belongs to nobody alice can write for
        writer.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/ds", repo_type="dataset")
    assert denied.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi(token=False).upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="org/ds", repo_type="dataset"
        )
    assert anonymous.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        writer.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="alice/missing")
    assert dataset.sha == head and len(dataset.history()) == 1


def test_commit_is_atomic(hub_server: FakeHub, writer: HfApi) -> None:
    from huggingface_hub.utils import get_session

    writer.create_repo("alice/atomic")
    repo = hub_server.repos[("model", "alice/atomic")]
    head = repo.sha
    body = "\n".join(
        json.dumps(line)
        for line in [
            {"key": "header", "value": {"summary": "half"}},
            {"key": "file", "value": {"path": "a.txt", "content": "YQ==", "encoding": "base64"}},
            {
                "key": "lfsFile",
                "value": {"path": "w.safetensors", "algo": "sha256", "oid": "0" * 64, "size": 1},
            },
        ]
    )
    url = f"{hub_server.url}/api/models/alice/atomic/commit/main"
    response = get_session().post(url, content=body, headers={"Authorization": f"Bearer {ALLOWED}"})
    assert response.status_code == 422  # the LFS content was never uploaded: nothing of the commit lands
    assert repo.sha == head and list(repo.files()) == [".gitattributes"]


def test_injected_failures_and_front_matter_validation(hub_server: FakeHub, writer: HfApi) -> None:
    writer.create_repo("alice/f")
    hub_server.fail("POST", r"/commit/", status=503)
    with pytest.raises(HfHubHTTPError) as outage:
        writer.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="alice/f")
    assert outage.value.response.status_code == 503 and list_repo_files("alice/f") == [".gitattributes"]
    writer.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="alice/f")  # only once
    assert list_repo_files("alice/f") == [".gitattributes", "a.txt"]

    card = "---\nbase_model: {}\nlicense: mit\n---\n# card\n"
    with pytest.raises(ValueError, match="base_model"):
        writer.upload_file(
            path_or_fileobj=card.format("/home/me/base").encode(), path_in_repo="README.md", repo_id="alice/f"
        )
    writer.upload_file(
        path_or_fileobj=card.format("org/base").encode(), path_in_repo="README.md", repo_id="alice/f"
    )
    assert "org/base" in Path(hf_hub_download("alice/f", "README.md")).read_text()
    assert ALLOWED not in repr(hub_server.requests) + repr(hub_server.repos) + repr(hub_server.user(ALLOWED))
