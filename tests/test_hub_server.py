"""The fake Hub in tests/hub_server.py, driven by the real huggingface_hub client over loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, get_token, hf_hub_download, list_repo_files, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import FakeHub, point_hf_client_at
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
    assert constants.ENDPOINT == hub_server.url and hub_server.url.startswith("http://127.0.0.1:")
    assert Path(constants.HF_HUB_CACHE).is_relative_to(tmp_path)
    assert Path(constants.HF_TOKEN_PATH).is_relative_to(tmp_path)
    assert get_token() is None  # no token from the machine leaks in


def test_download_dataset_file(hub_server: FakeHub, dataset) -> None:
    path = hf_hub_download("org/ds", "data/train.jsonl", repo_type="dataset")
    assert Path(path).read_text() == '{"a": 1}\n'
    assert Path(path).is_relative_to(constants.HF_HUB_CACHE)
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


def test_patches_are_undone(tmp_path: Path) -> None:
    import datasets.config
    from huggingface_hub import hf_api

    before = (constants.ENDPOINT, constants.HF_HUB_CACHE, hf_api.api.endpoint, datasets.config.HF_ENDPOINT)
    with pytest.MonkeyPatch.context() as mp:
        point_hf_client_at("http://127.0.0.1:1", tmp_path / "home", mp)
        assert hf_api.api.endpoint == datasets.config.HF_ENDPOINT == "http://127.0.0.1:1"
    after = (constants.ENDPOINT, constants.HF_HUB_CACHE, hf_api.api.endpoint, datasets.config.HF_ENDPOINT)
    assert after == before


def test_add_route_for_write_endpoints(hub_server: FakeHub, tmp_path: Path) -> None:
    """How push tests can extend the server: a create-repo route, driven by the real client."""
    from huggingface_hub.utils import get_session

    from tests.hub_server import Request, Response

    def create_repo(hub: FakeHub, req: Request) -> Response:
        body = json.loads(req.body)
        repo_id = f"{body['organization']}/{body['name']}"
        hub.add_repo(repo_id, tmp_path / "created" / repo_id, repo_type=body.get("type") or "model")
        return Response.json({"url": f"{hub.url}/datasets/{repo_id}", "name": repo_id})

    hub_server.add_route(("POST",), r"/api/repos/create", create_repo)
    hub_server.add_route(("POST",), r"/echo-length", lambda hub, req: Response.json(len(req.body)))
    url = HfApi().create_repo("org/new", repo_type="dataset", token=ALLOWED)
    assert url.repo_id == "org/new" and ("dataset", "org/new") in hub_server.repos
    assert HfApi().dataset_info("org/new").sha == hub_server.repos[("dataset", "org/new")].sha
    chunked = get_session().post(f"{hub_server.url}/echo-length", content=iter([b"ab", b"cde"]))
    assert chunked.json() == 5  # streamed (chunked) request bodies are read too
    unknown = get_session().get(f"{hub_server.url}/api/whatever")
    assert unknown.status_code == 404 and "no route" in unknown.headers["X-Error-Message"]
