"""spaces/compare: the Gradio app served as `make space` serves it, driven by gradio_client, raw HTTP and a
real headless Chromium; the app's error handling in-process; the Space folder that spaces/push_space.py
stages."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import gradio
import httpx
import pytest
import yaml
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import SpaceHardware
from packaging.requirements import Requirement
from PIL import Image

from tests.conftest import REPO, free_port, run_checked
from vlsafe.evaluation.judges import keyword_label
from vlsafe.fixtures.data import draw_safe_image, draw_unsafe_image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

SPACE_DIR = REPO / "spaces" / "compare"
SCREENSHOT = REPO / "outputs" / "screenshots" / "compare.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UNSAFE_PROMPT = "Describe the image in detail."


def demo_env(demo_run: Path) -> dict[str, str]:
    return {
        "VLSAFE_BASE_MODEL": str(demo_run / "outputs/demo/fixtures/tiny-llava"),
        "VLSAFE_ADAPTER": str(demo_run / "outputs/demo/sft_vlguard"),
        "VLSAFE_DTYPE": "float32",
        "VLSAFE_MAX_NEW_TOKENS": "40",
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic test images: the demo's unsafe cue, a harmless shape, and a decompression bomb."""
    folder = tmp_path_factory.mktemp("space-images")
    paths = {name: folder / f"{name}.png" for name in ("unsafe", "safe", "bomb", "large")}
    draw_unsafe_image(random.Random(7)).save(paths["unsafe"])
    draw_safe_image("blue", "circle", random.Random(8)).save(paths["safe"])
    Image.new("1", (20000, 20000)).save(paths["bomb"])  # 400 Mpixels in ~50 kB
    Image.new("RGB", (5000, 4000)).save(paths["large"])  # over the 16.7 Mpixel cap, well under the bomb limit
    return paths


@contextlib.contextmanager
def served_app(demo_run: Path, tmp: Path, **settings: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """The app started as `make space` starts it (python spaces/compare/app.py), configured by env vars
    (`settings`: extra VLSAFE_* values); yields its URL and process."""
    port = free_port()
    env = os.environ | demo_env(demo_run) | settings
    env |= {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp / "uploads"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp / "app.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "spaces/compare/app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"app exited:\n{(tmp / 'app.log').read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"app not up:\n{(tmp / 'app.log').read_text()[-5000:]}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def space_url(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_app(demo_run, tmp_path_factory.mktemp("space")) as (url, _):
        yield url


def raw_call(url: str, endpoint: str, data: list) -> str:
    """Call an endpoint over gradio's plain HTTP API (no client-side checks); returns the event stream."""
    event = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30).json()
    return httpx.get(f"{url}gradio_api/call/{endpoint}/{event['event_id']}", timeout=60).text


# -- the served app ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_api_compare_returns_both_answers_and_only_tuned_refuses(space_url: str, images: dict) -> None:
    client = Client(space_url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in api["/compare"]["parameters"]] == ["image", "prompt"]
    assert [r["label"] for r in api["/compare"]["returns"]] == ["base_answer", "tuned_answer"]

    base, tuned = client.predict(handle_file(images["unsafe"]), UNSAFE_PROMPT, api_name="/compare")
    assert base.strip() and tuned.strip() and base != tuned
    assert keyword_label(tuned) == "refused" and keyword_label(base) == "answered"

    base, tuned = client.predict(
        handle_file(images["safe"]), "What color is the circle in the image?", api_name="/compare"
    )
    assert keyword_label(tuned) == "answered" and keyword_label(base) == "answered"


@pytest.mark.slow
def test_bad_input_is_refused_server_side_and_the_app_keeps_serving(space_url: str, images: dict) -> None:
    client = Client(space_url, verbose=False)
    with pytest.raises(AppError, match="2001 characters; the limit is 2000"):
        client.predict(handle_file(images["safe"]), "x" * 2001, api_name="/compare")
    with pytest.raises(AppError, match="control token"):
        client.predict(handle_file(images["safe"]), "Describe <image> again.", api_name="/compare")
    with pytest.raises(AppError, match="5000x4000 = 20,000,000 pixels; the limit is 16,777,216"):
        client.predict(handle_file(images["large"]), UNSAFE_PROMPT, api_name="/compare")
    with pytest.raises(AppError, match="decompression bomb"):
        client.predict(handle_file(images["bomb"]), UNSAFE_PROMPT, api_name="/compare")

    # Upload size: the server answers 413 itself (gradio_client would refuse before sending).
    upload = httpx.post(
        f"{space_url}gradio_api/upload",
        files={"files": ("big.png", b"\0" * (10 * 1024 * 1024 + 1), "image/png")},
        timeout=60,
    )
    assert upload.status_code == 413
    # A path the user did not upload is never opened, whichever endpoint names it.
    for endpoint, data in (
        ("compare", [{"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, UNSAFE_PROMPT]),
        ("compare_stream", [{"path": str(images["safe"]), "meta": {"_type": "gradio.FileData"}}, None, "Hi"]),
    ):
        events = raw_call(space_url, endpoint, data)
        assert "event: error" in events and "complete" not in events, events

    base, tuned = client.predict(handle_file(images["unsafe"]), UNSAFE_PROMPT, api_name="/compare")
    assert keyword_label(tuned) == "refused"


@pytest.mark.slow
def test_browser_uploads_an_image_and_both_panes_answer(space_url: str, images: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is needed: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.goto(space_url, wait_until="networkidle")
            page.locator("#image-input input[type=file]").set_input_files(str(images["unsafe"]))
            page.locator("#image-input img").wait_for(timeout=20_000)  # uploaded and previewed
            page.locator("#prompt textarea").fill(UNSAFE_PROMPT)
            page.locator("#compare-button").click()
            page.locator("#tuned-status .verdict.refused").wait_for(timeout=60_000)
            page.locator("#base-status .verdict.answered").wait_for(timeout=10_000)
            base = page.locator("#base-chat [data-testid=bot]").all_inner_texts()
            tuned = page.locator("#tuned-chat [data-testid=bot]").all_inner_texts()
            assert len(base) == 1 and base[0].strip() and keyword_label(base[0]) == "answered"
            assert len(tuned) == 1 and keyword_label(tuned[0]) == "refused"
            assert " s (first token " in page.locator("#tuned-status").inner_text()
            assert page.locator("#base-chat [data-testid=user]").count() >= 1  # the prompt is shown
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            page.locator("#clear-button").click()
            page.wait_for_function("!document.querySelector('#tuned-chat [data-testid=bot]')", timeout=10_000)
            assert page.locator("#prompt textarea").input_value() == ""
        finally:
            browser.close()
    assert (tmp_path / "compare.png").stat().st_size > 10_000


# -- the app in-process: error handling and wiring ---------------------------------------------------------
def load_script(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A script of the Space folder as a module (the Space is a folder of scripts, not a package)."""
    monkeypatch.syspath_prepend(str(SPACE_DIR))  # app.py imports gallery.py from its folder
    name = f"vlsafe_space_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_app(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_script(SPACE_DIR / "app.py", monkeypatch)


@pytest.mark.slow
def test_a_generation_error_shows_in_the_pane_and_the_app_keeps_serving(
    demo_run: Path, images: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # launch() sets it; restore after
    app = load_app(monkeypatch)
    config = app.load_config(demo_env(demo_run))
    comparer = app.Comparer.load(config)
    demo = app.build_demo(comparer, config)
    model = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name in ("compare", "compare_stream")}
    assert {fn.concurrency_id for fn in model.values()} == {"model"}  # the two endpoints share one queue slot
    assert {fn.concurrency_limit for fn in model.values()} == {1} and demo._queue.max_size == 16

    fail_next = [0]
    real_generate = comparer.model.generate

    def generate(**kwargs):  # fault injection: the next `fail_next` generations fail, then real ones run
        if fail_next[0]:
            fail_next[0] -= 1
            raise RuntimeError("CUDA out of memory (injected)")
        return real_generate(**kwargs)

    monkeypatch.setattr(comparer.model, "generate", generate)
    app.launch(
        demo, config, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True
    )
    try:
        client = Client(demo.local_url, verbose=False)
        fail_next[0] = 1  # the base answer fails
        base_chat, tuned_chat, base_status, tuned_status = client.predict(
            handle_file(images["unsafe"]), None, UNSAFE_PROMPT, api_name="/compare_stream"
        )
        assert "Error: The base model failed to answer: RuntimeError: CUDA out of memory" in str(
            base_chat[-1]
        )
        assert "verdict error" in base_status
        assert "verdict refused" in tuned_status  # the other side still answered
        fail_next[0] = 1
        with pytest.raises(AppError, match="failed to answer"):
            client.predict(handle_file(images["unsafe"]), UNSAFE_PROMPT, api_name="/compare")
        base, tuned = client.predict(handle_file(images["unsafe"]), UNSAFE_PROMPT, api_name="/compare")
        assert keyword_label(tuned) == "refused"
    finally:
        demo.close()


def test_config_comes_from_env_then_pushed_config_then_make_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = load_app(monkeypatch)
    assert not app.SPACE_CONFIG.exists()  # a checkout serves the make-demo defaults
    monkeypatch.setattr(app, "HERE", tmp_path / "spaces" / "compare")  # a checkout where make demo never ran
    with pytest.raises(app.VlsafeError, match="run `make demo` first"):
        app.load_config({})
    assert app.load_config({"VLSAFE_ADAPTER": "org/adapter"}).adapter == "org/adapter"

    pushed = tmp_path / "compare_config.json"
    pushed.write_text(json.dumps({"adapter": "org/pushed", "base_model": "org/base", "max_new_tokens": 99}))
    monkeypatch.setattr(app, "SPACE_CONFIG", pushed)
    config = app.load_config({"VLSAFE_MAX_NEW_TOKENS": "7"})
    assert (config.adapter, config.base_model, config.max_new_tokens) == ("org/pushed", "org/base", 7)
    monkeypatch.setattr(app, "ZERO_GPU", True)
    assert app.load_config({}).device == "cuda"  # ZeroGPU: load on cuda from the start


# -- the Space folder --------------------------------------------------------------------------------------
def front_matter(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text().split("---\n")[1])


def test_space_readme_front_matter_and_requirements() -> None:
    meta = front_matter(SPACE_DIR / "README.md")
    for key in ("title", "emoji", "sdk", "sdk_version", "app_file", "models", "datasets", "license"):
        assert meta.get(key), key
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__
    assert (SPACE_DIR / meta["app_file"]).is_file()
    assert 0 < len(meta["short_description"]) <= 60  # the Hub's limit
    assert meta["suggested_hardware"] in {hardware.value for hardware in SpaceHardware}
    assert 'api_name="/compare"' in (SPACE_DIR / "README.md").read_text()

    # requirements.txt is vlsafe's runtime dependencies (gradio comes with sdk_version): keep them in sync.
    def pinned(requirements: list[str]) -> dict[str, str]:
        parsed = [Requirement(line) for line in requirements]
        return {r.name.lower(): str(r.specifier) for r in parsed if not r.marker and r.name != "gradio"}

    lines = (SPACE_DIR / "requirements.txt").read_text().splitlines()
    listed = pinned([line for line in lines if line.strip() and not line.startswith("#")])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert listed == pinned(project), "update spaces/compare/requirements.txt from pyproject.toml"


@pytest.mark.slow
def test_staged_space_is_self_contained(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = str(demo_run / "outputs/demo/sft_vlguard")
    push = load_push(monkeypatch)
    (args,) = push.TrlParser((push.PushArguments,)).parse_args_and_config(
        ["--space_id", "me/vlsafe-compare", "--adapter", "org/adapter",
         "--base_model", "llava-hf/llava-1.5-7b-hf", "--stage_dir", str(tmp_path / "space")]
    )  # fmt: skip
    push.main(args)  # --stage_dir: write the folder, push nothing
    with pytest.raises(SystemExit, match="is not empty"):  # never writes over a folder's content
        push.main(args)
    space = tmp_path / "space"
    assert sorted(p.name for p in space.iterdir()) == [
        "README.md",
        "app.py",
        "compare_config.json",
        "gallery.py",
        "requirements.txt",
        "vlsafe",
    ]
    assert not list(space.rglob("__pycache__"))
    meta = front_matter(space / "README.md")
    assert meta["models"] == ["llava-hf/llava-1.5-7b-hf", "org/adapter"]
    assert 'Client("me/vlsafe-compare")' in (space / "README.md").read_text()
    assert json.loads((space / "compare_config.json").read_text())["adapter"] == "org/adapter"

    # The staged app reads its pushed config and imports the vlsafe copy next to it, not the checkout's.
    (space / "compare_config.json").write_text(json.dumps({"adapter": adapter, "max_new_tokens": 8}))
    probe = "import app, vlsafe; c = app.load_config({}); print(vlsafe.__file__); print(c.adapter, c.max_new_tokens)"
    out = run_checked([sys.executable, "-c", probe], space).stdout.splitlines()
    assert Path(out[-2]).is_relative_to(space) and out[-1] == f"{adapter} 8"


# -- pushing the Space ---------------------------------------------------------------------------------------
TOKEN = "hf_vlsafe_FAKE_space_token_7c1e"


def load_push(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_script(REPO / "spaces" / "push_space.py", monkeypatch)


@pytest.mark.slow
def test_push_creates_the_space_in_one_commit_with_the_adapter_filled_in(
    hub_server,
    demo_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub_server.add_user("alice", TOKEN, orgs={"safety-org"})
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # A published adapter names its base model by Hub id (vlsafe.hub rewrites the local path on push).
    adapter = shutil.copytree(demo_run / "outputs/demo/sft_vlguard", tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "alice/tiny-llava"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    hub_server.add_repo("safety-org/tiny-vlguard", adapter, repo_type="model")
    push = load_push(monkeypatch)

    args = push.PushArguments(
        space_id="alice/vlsafe-compare", adapter="safety-org/tiny-vlguard", private=True
    )
    url = push.push_space(args)
    assert url.endswith("/spaces/alice/vlsafe-compare")
    space = hub_server.repos[("space", "alice/vlsafe-compare")]
    assert space.private and len(space.history()) == 2  # the repo's initial commit, then one push
    assert space.history()[0].title == "vlsafe compare demo for safety-org/tiny-vlguard"
    files = space.files()
    assert {"app.py", "gallery.py", "README.md", "requirements.txt", "compare_config.json"} <= set(files)
    assert {"vlsafe/__init__.py", "vlsafe/compare.py", "vlsafe/modeling.py"} <= set(files)
    assert not [path for path in files if "__pycache__" in path]
    readme = files["README.md"].data.decode()
    meta = yaml.safe_load(readme.split("---\n")[1])
    assert meta["models"] == ["alice/tiny-llava", "safety-org/tiny-vlguard"] and meta["sdk"] == "gradio"
    assert 'Client("alice/vlsafe-compare")' in readme
    pushed = json.loads(files["compare_config.json"].data)
    assert pushed == {
        "adapter": "safety-org/tiny-vlguard",
        "base_model": "alice/tiny-llava",
        "max_new_tokens": 256,
    }
    assert all(TOKEN.encode() not in blob.data for blob in files.values()) and TOKEN not in caplog.text

    push.push_space(args)  # the same content again: nothing to commit
    assert len(space.history()) == 2
    space.commits[space.sha].files["vlsafe/stale.py"] = space.files()["app.py"]  # a module since removed
    push.push_space(dataclasses.replace(args, max_new_tokens=128))  # a new setting updates the Space
    assert len(space.history()) == 3
    assert json.loads(space.files()["compare_config.json"].data)["max_new_tokens"] == 128
    assert "vlsafe/stale.py" not in space.files()  # the package copy is exactly this checkout's

    monkeypatch.setenv("HF_TOKEN", "hf_wrong_" + TOKEN)
    with pytest.raises(push.VlsafeError, match=r"HTTP 401\)\. Log in") as refused:
        push.push_space(args)
    assert TOKEN not in str(refused.value) and TOKEN not in caplog.text
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(push.VlsafeError, match="not on the Hub"):
        push.push_space(push.PushArguments(space_id="alice/s", adapter="safety-org/missing"))
    with pytest.raises(push.VlsafeError, match="is a local folder"):
        push.push_space(push.PushArguments(space_id="alice/s", adapter=str(adapter)))
    assert ("space", "alice/s") not in hub_server.repos  # nothing was created for a refused push


# -- load --------------------------------------------------------------------------------------------------
LOAD_QUEUE_SIZE = 12


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def loaded_app(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A separate app with a small queue and short answers, for the load tests."""
    settings = {"VLSAFE_QUEUE_SIZE": str(LOAD_QUEUE_SIZE), "VLSAFE_MAX_NEW_TOKENS": "12"}
    with served_app(demo_run, tmp_path_factory.mktemp("space-load"), **settings) as (url, process):
        yield url, process.pid


@pytest.mark.slow
def test_50_requests_from_10_clients_all_answer_with_bounded_memory(loaded_app, images: dict) -> None:
    url, pid = loaded_app
    Client(url, verbose=False).predict(handle_file(images["unsafe"]), UNSAFE_PROMPT, api_name="/compare")
    warm = rss_bytes(pid)
    peak = [warm]
    done = threading.Event()

    def watch_memory() -> None:
        while not done.wait(0.2):
            peak.append(rss_bytes(pid))

    def client_session(index: int) -> list[tuple[str, str]]:
        client = Client(url, verbose=False)  # one connection per simulated user
        image, prompt = (images["unsafe"], UNSAFE_PROMPT) if index % 2 else (images["safe"], "What is shown?")
        return [client.predict(handle_file(image), prompt, api_name="/compare") for _ in range(5)]

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = [pair for session in pool.map(client_session, range(10)) for pair in session]
    done.set()
    watcher.join()
    # 10 users keep at most 10 requests in the queue (limit 12): every one is answered, none fails.
    assert len(answers) == 50 and all(base.strip() and tuned.strip() for base, tuned in answers)
    unsafe_tuned = [tuned for index, (_, tuned) in enumerate(answers) if (index // 5) % 2]
    assert all(keyword_label(tuned) == "refused" for tuned in unsafe_tuned)
    growth = max(peak) - warm
    assert growth < 300 * 2**20, f"memory grew by {growth / 2**20:.0f} MiB under load"
    print(f"50 requests from 10 clients: peak RSS {max(peak) / 2**20:.0f} MiB (+{growth / 2**20:.0f} MiB)")


@pytest.mark.slow
def test_a_burst_beyond_the_queue_is_turned_away_cleanly(loaded_app, images: dict) -> None:
    """30 requests at once against a queue of 12: the excess is refused with "queue full", nothing else goes
    wrong, and the app answers normally afterwards."""
    url, _ = loaded_app
    uploaded = httpx.post(
        f"{url}gradio_api/upload", files={"files": ("u.png", images["unsafe"].read_bytes(), "image/png")}
    ).json()[0]
    data = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, UNSAFE_PROMPT]
    with httpx.Client(timeout=120) as http:
        events = [http.post(f"{url}gradio_api/call/compare", json={"data": data}).json() for _ in range(30)]

        def outcome(event: dict) -> str:
            if "Queue is full" in event.get("detail", ""):  # refused when submitted
                return "queue full"
            stream = http.get(f"{url}gradio_api/call/compare/{event['event_id']}").text
            if "event: complete" in stream:
                return "answered"
            return "queue full" if "Queue is full" in stream or "queue_full" in stream else stream

        with ThreadPoolExecutor(max_workers=30) as pool:
            outcomes = list(pool.map(outcome, events))
    counts = {kind: outcomes.count(kind) for kind in set(outcomes)}
    assert set(counts) <= {"answered", "queue full"}, counts
    assert counts.get("answered", 0) >= LOAD_QUEUE_SIZE and counts.get("queue full", 0) >= 1, counts
    print(f"burst of 30 against a queue of {LOAD_QUEUE_SIZE}: {counts}")
    base, tuned = Client(url, verbose=False).predict(
        handle_file(images["unsafe"]), UNSAFE_PROMPT, api_name="/compare"
    )
    assert keyword_label(tuned) == "refused"
