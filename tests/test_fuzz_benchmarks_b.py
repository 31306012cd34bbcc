"""Hostile files against the MOSSBench, VLSBench, SIUO and MSSBench loaders: property-based tests with hypothesis.

Each example starts from the benchmark's synthetic copy in its published layout (`vlsafe.fixtures.benchmarks`)
and damages it: records with wrong types, hostile strings, missing or extra keys and renamed keys; the records
file truncated, not UTF-8, with a NUL byte, empty, nested too deeply or of another top-level type; images broken,
truncated, enormous or missing; the images packed into a zip or tar archive that may be tampered with (zip slip,
absolute members, links, devices, bad CRCs, truncation). The values, images, zip attacks and checks of the
dataset loaders' fuzz tests (tests/test_fuzz_loaders.py) are reused. The property checked for each one:

- `load_benchmark` returns prompts whose every row decodes, whose images lie in the benchmark folder or the
  vlsafe cache, and whose count equals the prompts in the files minus the skips it logged; or
- it raises `DataError` with a short message naming the file and, for a malformed record, the record;
- never another exception, and no file written anywhere but the vlsafe cache.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import io
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.test_fuzz_loaders import (
    FUZZ,
    GOOD_IMAGES,
    ZIP_ATTACKS,
    _inside,
    _is_good,
    _json_bytes,
    _mutate,
    _paths,
    _snapshot,
    _Warnings,
    _write_image,
    _zip_bytes,
    hostile_values,
    image_kinds,
)
from vlsafe.errors import DataError, VlsafeError
from vlsafe.evaluation.benchmarks import load_benchmark, mossbench, mssbench, siuo, vlsbench
from vlsafe.evaluation.benchmarks.base import Benchmark
from vlsafe.fixtures.benchmarks.mossbench import write_mossbench
from vlsafe.fixtures.benchmarks.mssbench import write_mssbench
from vlsafe.fixtures.benchmarks.siuo import write_siuo
from vlsafe.fixtures.benchmarks.vlsbench import write_vlsbench

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]
EXAMPLES = 100  # per benchmark: the file runs in about two minutes on two cores


@dataclass(frozen=True)
class Spec:
    """Where a benchmark's records and images lie in its published layout, and how many prompts a file gives."""

    benchmark: Benchmark
    write: Callable[[Path], Path]
    files: tuple[str, ...]  # the records files
    images: str  # the image folder the archive facet packs into <images>.zip / .tar
    archives: tuple[str, ...]
    prompts: Callable[[Any], int]  # prompts a loaded records file gave
    items: Callable[[Any], Any] = lambda content: content  # the container of the records (a list or object)

    @property
    def subsets(self) -> list[str]:
        return list(self.benchmark.subsets)


SPECS = {
    "mossbench": Spec(
        mossbench.BENCHMARK, write_mossbench,
        ("data/images_information/information.json", "data_contrast/images_information/information.json"),
        "data/images", ("zip", "tar"), len,
    ),
    "vlsbench": Spec(vlsbench.BENCHMARK, write_vlsbench, ("data.json",), "imgs", ("zip", "tar"), len),
    "siuo": Spec(siuo.BENCHMARK, write_siuo, ("data/siuo_gen.json",), "data/images", ("zip",), len),
    "mssbench": Spec(
        mssbench.BENCHMARK, write_mssbench, ("combined.json",), "chat", ("zip",),
        lambda content: 2 * sum(len(item["queries"]) for item in content["chat"]), lambda content: content["chat"],
    ),
}  # fmt: skip
DAMAGE = ("truncate", "other_top_level", "scalars", "bad_utf8", "bom", "empty", "nul_byte", "deep")
TAR_ATTACKS = ("slip", "absolute", "symlink", "hardlink", "fifo", "truncated", "garbage", "zero_bytes")


@functools.cache
def _template(name: str) -> Path:
    """The benchmark's synthetic copy, written once (each example copies it), removed when the tests end."""
    root = Path(tempfile.mkdtemp(prefix=f"vlsafe-fuzz-{name}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return SPECS[name].write(root / name)


@dataclass
class Case:
    """One damaged copy of a benchmark: the records files as changed, and the damage drawn for the rest."""

    name: str
    contents: dict[str, Any]  # records file -> its parsed content, as changed
    labels: list[str] = field(default_factory=list)  # how messages may name the changed records
    damage: tuple[str, str, int] | None = None  # (file, kind, parameter)
    images: dict[str, str | bytes] = field(default_factory=dict)  # relative image path -> kind
    archive: tuple[str, str | None, int] | None = None  # (zip | tar, attack, parameter)
    skip: bool = False
    ensure_ascii: bool = True
    written: dict[str, bytes] = field(default_factory=dict, repr=False)


def _labels(index: int, key: str | None, record: Any) -> list[str]:
    labels = [f"#{index}", f"chat #{index}", "'chat-"]
    if key is not None:
        labels.append(repr(key)[:10])
    if isinstance(record, dict):
        for id_key in ("instruction_id", "question_id"):
            if isinstance(record.get(id_key), str | int):
                labels += [repr(str(record[id_key]))[:10], repr(record[id_key])[:10]]
    return labels


@st.composite
def cases(draw: st.DrawFn, name: str) -> Case:
    spec, root = SPECS[name], _template(name)
    case = Case(name, {file: json.loads((root / file).read_text()) for file in spec.files})
    facet = draw(st.sampled_from(["records", "records", "images", "json", "archive", "mixed"]))
    if facet in ("records", "mixed"):
        file = draw(st.sampled_from(spec.files))
        for _ in range(draw(st.integers(1, 2))):
            _mutate_one(draw, case, file)
    if facet == "json" or (facet == "mixed" and draw(st.integers(0, 3)) == 0):
        case.damage = (
            draw(st.sampled_from(spec.files)),
            draw(st.sampled_from(DAMAGE)),
            draw(st.integers(0, 9999)),
        )
    image_files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
    for path in image_files:
        broken = facet in ("images", "mixed") and draw(st.integers(0, 3)) == 0
        case.images[path] = draw(image_kinds) if broken else draw(st.sampled_from(sorted(GOOD_IMAGES)))
    if facet == "archive" or (facet == "mixed" and draw(st.booleans())):
        kind = draw(st.sampled_from(spec.archives))
        attacks = ZIP_ATTACKS if kind == "zip" else TAR_ATTACKS
        attack = draw(st.one_of(st.none(), st.sampled_from(attacks)))
        case.archive = (kind, attack, draw(st.integers(0, 9999)))
    case.skip = draw(st.sampled_from([True, True, False]))
    case.ensure_ascii = draw(st.booleans())
    return case


def _mutate_one(draw: st.DrawFn, case: Case, file: str) -> None:
    """Change one record of `file` (a value, a deleted key, an extra key, or its key), or the file's top level."""
    content = case.contents[file]
    container = SPECS[case.name].items(content)
    if isinstance(content, dict) and draw(st.integers(0, 9)) == 0:  # the top level of an object file
        key = draw(st.sampled_from(sorted(content)))
        content[key] = copy.deepcopy(draw(hostile_values))
        case.labels += [repr(key), "#0"]
        return
    if not isinstance(container, dict | list) or not container:  # an earlier change replaced it
        return
    keys = list(container) if isinstance(container, dict) else list(range(len(container)))
    index = draw(st.integers(0, len(keys) - 1))
    key = keys[index]
    case.labels += _labels(index, key if isinstance(key, str) else None, container[key])
    if isinstance(container, dict) and draw(st.integers(0, 7)) == 0:  # a hostile key (MOSSBench's pids)
        new_key = draw(st.one_of(st.text(max_size=6), st.sampled_from(["", " ", "\x00", "../x"])))
        container[new_key] = container.pop(key)
        case.labels.append(repr(new_key)[:10])
        return
    record = container[key]
    path = draw(st.sampled_from(list(_paths(record)))) if isinstance(record, dict) else ()
    root_operations = ["set", "extra_key"] if isinstance(record, dict) else ["set"]
    operation = draw(st.sampled_from(["set", "set", "delete", "extra_key"] if path else root_operations))
    container[key] = _mutate(record, path, operation, copy.deepcopy(draw(hostile_values)))
    case.labels += _labels(index, None, container[key])
    if isinstance(container, list) and draw(st.integers(0, 5)) == 0:
        container.append(copy.deepcopy(container[0]))  # a repeated record
        case.labels += _labels(0, None, container[0]) + _labels(len(container) - 1, None, container[0])


# ---------------------------------------------------------------------------------------------- writing


def _damaged(text: bytes, kind: str, param: int) -> bytes:
    at = param % (len(text) + 1)
    return {
        "truncate": lambda: text[:at],
        "other_top_level": lambda: [b"[" + text + b"]", b'"records"', b"42", b"null", b'{"chat": 1}'][
            param % 5
        ],
        "scalars": lambda: b'[1, "two", null, true, 4.5]',
        "bad_utf8": lambda: text[:at] + b"\xc3\x28" + text[at:],
        "bom": lambda: b"\xef\xbb\xbf" + text,
        "empty": lambda: b"",
        "nul_byte": lambda: text[:at] + b"\x00" + text[at:],
        "deep": lambda: b"[" * 100_000 + b"]" * 100_000,
    }[kind]()


def _tar_bytes(members: dict[str, bytes], attack: str | None, param: int, marker: str, work: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)

        for name, data in members.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            add(info, data)
        first = next(iter(members), "none.png")
        special = {
            "slip": lambda: tarfile.TarInfo("../" * (1 + param % 5) + marker),
            "absolute": lambda: tarfile.TarInfo(str(work / marker)),
            "symlink": lambda: _link(first if param % 2 else "link.png", tarfile.SYMTYPE, "/etc/passwd"),
            "hardlink": lambda: _link("hard.png", tarfile.LNKTYPE, "../" * 3 + marker),
            "fifo": lambda: _link("pipe.png", tarfile.FIFOTYPE, ""),
        }
        if attack in special:
            add(special[attack](), b"escaped")
    data = buffer.getvalue()
    return {
        "truncated": data[: len(data) * (param % 100) // 100],
        "garbage": bytes((param * 31 + i * 17) % 256 for i in range(600)),
        "zero_bytes": b"",
    }.get(attack, data)


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, target, stat.S_IMODE(0o644)
    return info


def _write_case(case: Case, data: Path, marker: str, work: Path) -> None:
    spec = SPECS[case.name]
    shutil.copytree(_template(case.name), data, copy_function=os.link)  # every file is replaced below
    for file, content in case.contents.items():
        text = _json_bytes(content, ensure_ascii=case.ensure_ascii)
        if case.damage and case.damage[0] == file:
            text = _damaged(text, *case.damage[1:])
        (data / file).unlink()  # a hard link to the template: never write through it
        (data / file).write_bytes(text)
        case.written[file] = text
    for path, kind in case.images.items():
        (data / path).unlink()
        _write_image(data / path, kind)
    if case.archive:
        kind, attack, param = case.archive
        folder = data / spec.images
        members = {}
        for path in sorted(folder.rglob("*")):
            name = f"{folder.name}/{path.relative_to(folder)}"
            members[name + "/" if path.is_dir() else name] = b"" if path.is_dir() else path.read_bytes()
        pack = _zip_bytes if kind == "zip" else _tar_bytes
        archive = pack(members, attack, param, marker, work)
        shutil.rmtree(folder)
        folder.with_name(f"{folder.name}.{kind}").write_bytes(archive)


# ---------------------------------------------------------------------------------------------- running


def run_case(case: Case) -> VlsafeError | Any:
    """Load `case` in a fresh folder and check the property; returns the prompts or the error."""
    spec = SPECS[case.name]
    marker = f"vlsafe-fuzz-escaped-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="vlsafe-fuzz-b-") as tmp:
        work = Path(tmp)
        data, cache, cwd = work / "data", work / "cache", work / "cwd"
        cwd.mkdir()
        _write_case(case, data, marker, work)
        before = _snapshot(work)
        logged = _Warnings()
        vlsafe_logger = logging.getLogger("vlsafe")
        vlsafe_logger.addHandler(logged)
        try:
            with mock.patch.dict(os.environ, {"VLSAFE_CACHE": str(cache)}), _inside(cwd):
                outcome = load_benchmark(spec.benchmark, data, spec.subsets, skip_missing_images=case.skip)
        except VlsafeError as error:
            outcome = error
        finally:
            vlsafe_logger.removeHandler(logged)
        after = _snapshot(work)

        escaped = [p / marker for p in (cache / "extracted" / "x").parents if (p / marker).exists()]
        assert not escaped, f"an archive member escaped the cache: {escaped}"
        new = sorted(set(after) - set(before))
        assert all(p == "cache" or p.startswith("cache/extracted") for p in new), new
        assert {p: s for p, s in after.items() if not p.startswith("cache")} == before
        if (cache / "extracted").is_dir():
            leftovers = [p.name for p in (cache / "extracted").iterdir() if p.name.startswith(".")]
            assert not leftovers, f"half-extracted staging folders left behind: {leftovers}"
        if isinstance(outcome, VlsafeError):
            _check_error(case, outcome, data)
        else:
            _check_prompts(case, outcome, logged.messages, data, cache)
        _events(case, outcome)
        return outcome


def _events(case: Case, outcome: Any) -> None:
    """What the inputs and outcomes were, for `--hypothesis-show-statistics`."""
    with contextlib.suppress(Exception):  # event() only works inside a hypothesis test
        event("DataError" if isinstance(outcome, Exception) else "loaded")
        event(f"bad images: {sum(not _is_good(kind) for kind in case.images.values())}")
        event(f"records changed: {bool(case.labels)}")
        if case.damage:
            event(f"file damage: {case.damage[1]}")
        if case.archive:
            event(f"{case.archive[0]} archive, attack: {case.archive[1]}")


def _check_error(case: Case, error: VlsafeError, data: Path) -> None:
    message = str(error)
    assert isinstance(error, DataError), f"{type(error).__name__}: {message}"
    assert 20 < len(message) < 2500, f"message of {len(message)} characters: {message[:300]}"
    spec = SPECS[case.name]
    named = [Path(file).name for file in spec.files] + [Path(spec.images).name, str(data)]
    assert any(name in message for name in named), f"the message names no file of {named}: {message}"
    only_records = case.damage is None and case.archive is None and all(map(_is_good, case.images.values()))
    if only_records and case.labels:
        assert any(label in message for label in case.labels), f"names no record of {case.labels}: {message}"


def _check_prompts(case: Case, prompts: Any, logged: list[str], data: Path, cache: Path) -> None:
    spec = SPECS[case.name]
    prompts_in = sum(spec.prompts(json.loads(case.written[file].decode("utf-8-sig"))) for file in spec.files)
    skips = [m for m in (re.search(r"skipped (\d+) of (\d+)", message) for message in logged) if m]
    if skips:
        assert case.skip and len(skips) == 1 and int(skips[0][2]) == prompts_in, (logged, prompts_in)
        assert len(prompts) == prompts_in - int(skips[0][1]), (logged, len(prompts))
    else:
        assert len(prompts) == prompts_in, f"{prompts_in} prompts in, {len(prompts)} out, no skip logged"
    roots = (data.resolve(), cache.resolve())
    for images in prompts.data.column("images").to_pylist():  # the stored paths, undecoded
        for image in images:
            assert any(Path(image["path"]).resolve().is_relative_to(root) for root in roots), image["path"]
    for row in prompts:  # decodes every image, as generation will
        assert all(image.size[0] > 0 for image in row["images"])
        assert (
            isinstance(row["id"], str)
            and row["id"]
            and row["harmful"] == spec.benchmark.subsets[row["subset"]]
        )


# ---------------------------------------------------------------------------------------------- tests


@settings(FUZZ, max_examples=EXAMPLES)
@given(case=cases("mossbench"))
def test_mossbench_survives_hostile_files(case: Case) -> None:
    run_case(case)


@settings(FUZZ, max_examples=EXAMPLES)
@given(case=cases("vlsbench"))
def test_vlsbench_survives_hostile_files(case: Case) -> None:
    run_case(case)


@settings(FUZZ, max_examples=EXAMPLES)
@given(case=cases("siuo"))
def test_siuo_survives_hostile_files(case: Case) -> None:
    run_case(case)


@settings(FUZZ, max_examples=EXAMPLES)
@given(case=cases("mssbench"))
def test_mssbench_survives_hostile_files(case: Case) -> None:
    run_case(case)


def _case(name: str, change: Callable[[dict], None] | None = None, **options: Any) -> Case:
    """The benchmark's copy with `change(contents)` applied to its parsed records files, and other damage."""
    spec = SPECS[name]
    case = Case(name, {file: json.loads((_template(name) / file).read_text()) for file in spec.files})
    if change:
        change(case.contents)
    for key, value in options.items():
        setattr(case, key, value)
    return case


# (name, case, what the outcome must be: "error" with a message pattern, or a prompt count)
REGRESSIONS: list[tuple[str, Case, str | int]] = [
    ("tar member climbing out", _case("vlsbench", archive=("tar", "slip", 2)), r"imgs.tar: member '(\.\./)+vlsafe-fuzz-escaped-\w+' is unsafe \(path climbs out"),
    ("tar hard link out of the folder", _case("mossbench", archive=("tar", "hardlink", 0)), r"member 'hard.png' is unsafe \(a link or special file\)"),
    ("tar symbolic link", _case("vlsbench", archive=("tar", "symlink", 1)), r"member 'imgs/0.png' is unsafe \(a link or special file\)"),
    ("tar absolute member", _case("mossbench", archive=("tar", "absolute", 0)), r"images.tar: member '/.*vlsafe-fuzz-escaped-\w+' is unsafe \(absolute path\)"),
    ("zip absolute member", _case("siuo", archive=("zip", "absolute", 0)), r"member '/tmp/.*vlsafe-fuzz-escaped-\w+' is unsafe \(absolute path\)"),
    ("tar device file", _case("vlsbench", archive=("tar", "fifo", 0)), r"member 'pipe.png' is unsafe \(a link or special file\)"),
    ("tar cut inside a member", _case("vlsbench", archive=("tar", "truncated", 43)), r"imgs.tar is not a readable tar archive \(ReadError: unexpected end of data"),
    ("tar cut between members: the lost images are named", _case("vlsbench", archive=("tar", "truncated", 40)), r"3 of 11 images .*imgs/9.png': missing\) of records '7', '8', '9'"),
    ("zip slip", _case("siuo", archive=("zip", "slip", 1)), r"member '(\.\./)+vlsafe-fuzz-escaped-\w+' is unsafe \(path climbs out"),
    ("images zip with a bad CRC", _case("mssbench", archive=("zip", "bad_crc", 0)), r"Cannot extract member 'chat/0.jpg' of .*chat.zip \(BadZipFile"),
    ("MOSSBench key with a NUL byte", _case("mossbench", lambda c: c["data/images_information/information.json"].update({"a\x00": {"image": "images/1.png", "question": "q"}})), 14),
    ("MOSSBench blank key", _case("mossbench", lambda c: c["data/images_information/information.json"].update({" ": {}})), r"Record ' ' in .*information.json has an empty key"),
    ("MOSSBench image path with a NUL byte", _case("mossbench", lambda c: c["data/images_information/information.json"]["2"].update(image="images/\x00.png")), r"images/\\x00.png': missing\) of records '2'"),
    ("MSSBench 'chat' is a number", _case("mssbench", lambda c: c["combined.json"].update(chat=3)), r"no list under the key 'chat' \(found 3\)"),
    ("MSSBench query is a list", _case("mssbench", lambda c: c["combined.json"]["chat"][1]["queries"].__setitem__(0, ["q"])), r"record chat #1, query #0 in .*combined.json: field 'query'"),
    ("VLSBench id is a float", _case("vlsbench", lambda c: c["data.json"][2].update(instruction_id=2.5)), r"record #2 in .*data.json: field 'instruction_id' \(its id\) must be an integer"),
    ("SIUO record is null", _case("siuo", lambda c: c["data/siuo_gen.json"].__setitem__(4, None)), r"record #4 in .*siuo_gen.json: expected an object, found None"),
    ("SIUO empty list gives no prompts", _case("siuo", lambda c: c["data/siuo_gen.json"].clear()), 0),
    ("lone surrogate in a question", _case("siuo", lambda c: c["data/siuo_gen.json"][1].update(question="\ud800")), r"Record #1 in .*siuo_gen.json holds text that is not valid Unicode"),
    ("every image broken, skipped and counted", _case("vlsbench", images={f"imgs/{n}.png": "text" for n in range(11)}, skip=True), 0),
    ("image over the pixel limit", _case("siuo", images={"data/images/S-01.png": "huge"}), r"S-01.png': too large \(108000000 pixels"),
    ("JSON nested past the recursion limit", _case("mssbench", damage=("combined.json", "deep", 0)), r"combined.json is not valid JSON \(nested too deeply\)"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), [r[1:] for r in REGRESSIONS], ids=[r[0] for r in REGRESSIONS])
def test_hostile_file_regressions(case: Case, expected: str | int) -> None:
    for path in sorted(str(p.relative_to(_template(case.name))) for p in _template(case.name).rglob("*")):
        if path.endswith((".png", ".jpg")):
            case.images.setdefault(path, "png")
    outcome = run_case(case)
    if isinstance(expected, int):
        assert not isinstance(outcome, Exception), outcome
        assert len(outcome) == expected
    else:
        assert isinstance(outcome, DataError), f"loaded {outcome}"
        assert re.search(expected, str(outcome)), str(outcome)
