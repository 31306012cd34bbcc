"""MSSBench's chat task from its Hub dataset: each query with the safe and the unsafe image, ids, the Hub path, errors."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks import load_benchmark
from vlsafe.evaluation.benchmarks.base import image_paths
from vlsafe.evaluation.benchmarks.mssbench import BENCHMARK, HUB_ID
from vlsafe.fixtures.benchmarks.mssbench import TYPES, write_mssbench


@pytest.fixture(scope="module")
def mss(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mssbench(tmp_path_factory.mktemp("mssbench") / "mssbench")


@pytest.fixture
def copy(mss: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(mss, tmp_path / "mssbench"))


def _edit(folder: Path, change) -> None:
    data = json.loads((folder / "combined.json").read_text())
    change(data)
    (folder / "combined.json").write_text(json.dumps(data))


def _prompts(prompts) -> dict[tuple[str, str], tuple[str, str]]:
    """{(subset, id): (query, image file name)}."""
    return {
        (row["subset"], row["id"]): (row["messages"][0]["content"][-1]["text"], Path(path).name)
        for row, [path] in zip(prompts, image_paths(prompts), strict=True)
    }


def test_each_query_is_asked_with_the_safe_and_with_the_unsafe_image(mss: Path) -> None:
    prompts = load_benchmark(BENCHMARK, mss)
    chat = json.loads((mss / "combined.json").read_text())["chat"]
    assert Counter(zip(prompts["subset"], prompts["harmful"], strict=True)) == {
        ("chat_safe", False): 8,
        ("chat_unsafe", True): 8,
    }
    assert Counter(prompts["category"]) == {kind: 4 for kind in TYPES}
    expected = {
        (subset, query, item[key])
        for item in chat
        for query in item["queries"]
        for subset, key in (("chat_safe", "safe_image_path"), ("chat_unsafe", "unsafe_image_path"))
    }
    assert {(subset, *value) for (subset, _), value in _prompts(prompts).items()} == expected
    safe = {i: v for (s, i), v in _prompts(prompts).items() if s == "chat_safe"}
    unsafe = {i: v for (s, i), v in _prompts(prompts).items() if s == "chat_unsafe"}
    assert safe.keys() == unsafe.keys()  # one id per query, shared by its two prompts
    assert all(safe[i][0] == unsafe[i][0] and safe[i][1] != unsafe[i][1] for i in safe)
    assert all(i.startswith("chat-") for i in safe)
    assert prompts["intent"][0] == chat[0]["intent"]
    red, green, blue = prompts[-1]["images"][0].convert("RGB").resize((1, 1)).getpixel((0, 0))
    assert red > 2 * max(green, blue)  # the unsafe picture: the warning-stripe cue


def test_one_subset_alone(mss: Path) -> None:
    prompts = load_benchmark(BENCHMARK, mss, ["chat_unsafe"])
    assert set(prompts["subset"]) == {"chat_unsafe"} and len(prompts) == 8


def test_ids_stay_with_their_prompt_when_items_and_queries_are_reordered(copy: Path) -> None:
    before = _prompts(load_benchmark(BENCHMARK, copy))

    def shuffle(data: dict) -> None:
        data["chat"].reverse()
        for item in data["chat"]:
            item["queries"].reverse()

    _edit(copy, shuffle)
    assert _prompts(load_benchmark(BENCHMARK, copy)) == before


def test_an_exact_repeat_is_numbered(copy: Path) -> None:
    _edit(copy, lambda data: data["chat"].append(data["chat"][0]))
    prompts = load_benchmark(BENCHMARK, copy, ["chat_safe"])
    first = prompts["id"][0]
    assert len(prompts) == 10 and prompts["id"][-2:] == [f"{first}-2", f"{prompts['id'][1]}-2"]


def test_the_file_name_the_repository_script_reads(copy: Path) -> None:
    (copy / "combined.json").rename(copy / "combine.json")
    assert len(load_benchmark(BENCHMARK, copy)) == 16


def test_instruction_before_each_query_reproduces_the_papers_setting(mss: Path) -> None:
    prompts = load_benchmark(BENCHMARK, mss, ["chat_safe"], instruction="You see this. The user query is: ")
    plain = load_benchmark(BENCHMARK, mss, ["chat_safe"])
    assert prompts["id"] == plain["id"]
    assert all(
        row["messages"][0]["content"][-1]["text"]
        == "You see this. The user query is: " + other["messages"][0]["content"][-1]["text"]
        for row, other in zip(prompts, plain, strict=True)
    )


def test_the_hub_dataset_is_the_default_and_the_embodied_images_stay_there(mss: Path, hub_server) -> None:
    hub_server.add_repo(HUB_ID, mss, repo_type="dataset")
    prompts = load_benchmark(BENCHMARK)
    assert len(prompts) == 16
    fetched = [path for method, path, _ in hub_server.requests if method == "GET" and "/resolve/" in path]
    assert any(p.endswith("/combined.json") for p in fetched) and any("/chat/" in p for p in fetched)
    assert not any("/embodied/" in p for p in fetched)


def test_another_layout_names_the_expected_keys(copy: Path) -> None:
    (copy / "combined.json").write_text(json.dumps({"data": []}))
    with pytest.raises(
        DataError, match=r"no list under the key 'chat' \(found None\).*keys 'chat' and 'embodied'"
    ):
        load_benchmark(BENCHMARK, copy)
    (copy / "combined.json").write_text(json.dumps([{"queries": []}]))
    with pytest.raises(DataError, match=r"combined.json must hold a JSON object"):
        load_benchmark(BENCHMARK, copy)


def test_wrong_folder_names_both_file_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"has none of combined.json, combine.json.*kzhou35/mssbench"):
        load_benchmark(BENCHMARK, tmp_path)


def test_chat_images_not_downloaded(copy: Path) -> None:
    shutil.rmtree(copy / "chat")
    with pytest.raises(DataError, match=r"neither chat/ nor chat.zip / chat.tar"):
        load_benchmark(BENCHMARK, copy)


def test_missing_unsafe_image_names_the_prompts_that_need_it(copy: Path) -> None:
    (copy / "chat" / "3.jpg").unlink()
    assert len(load_benchmark(BENCHMARK, copy, ["chat_safe"])) == 8  # not needed for the safe half
    with pytest.raises(DataError, match=r"chat/3.jpg': missing\) of records 'chat-\w+', 'chat-\w+'"):
        load_benchmark(BENCHMARK, copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c[1].update(queries="How?"),
            r"record chat #1 in .*: field 'queries' must be a non-empty list",
        ),
        (
            lambda c: c[2].update(queries=[]),
            r"record chat #2 in .*: field 'queries' must be a non-empty list",
        ),
        (
            lambda c: c[0]["queries"].append(None),
            r"record chat #0, query #2 in .*: field 'query' must be a non-e",
        ),
        (lambda c: c[3].pop("unsafe_image_path"), r"record chat #3 in .*: field 'unsafe_image_path' must be"),
        (lambda c: c[0].update(Type=4), r"record chat #0 in .*: field 'Type' must be a string when present"),
        (lambda c: c[1].update(safe_image_path="../../x.jpg"), r"'../../x.jpg', which points outside"),
        (lambda c: c.insert(0, 5), r"record chat #0 in .*combined.json: expected an object, found 5"),
    ],
)
def test_malformed_item_is_named(copy: Path, change, message: str) -> None:
    _edit(copy, lambda data: change(data["chat"]))
    with pytest.raises(DataError, match=message):
        load_benchmark(BENCHMARK, copy)
