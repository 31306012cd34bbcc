"""Hostile files against the FigStep, XSTest, MM-SafetyBench and JailBreakV-28K loaders (hypothesis).

Each example copies the benchmark's synthetic copy (its exact published layout) and then damages it: records
or rows mutated (hostile values from tests/test_fuzz_loaders.py, missing keys, removed, renamed or extra columns,
rows with a field too many or too few, repeated rows), whole files damaged (truncated, bad UTF-8, NUL bytes, a
byte-order mark, empty, another top-level type, random bytes), images replaced by broken, truncated, enormous or
missing ones, and image paths that climb out of the folder to a real image beside it. The property checked, through
`load_benchmark` as a user calls it:

- a dataset whose every row decodes, whose images all lie in the benchmark folder or the vlsafe cache, and whose
  size is the prompts the files hold (as the standard library reads them) less the skip count it logged; or
- a `DataError` naming the file (or image) and, for a malformed record, the record (#index, id or line);
- never another exception, and nothing written anywhere but the vlsafe cache.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import io
import json
import logging
import os
import re
import shutil
import tempfile
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
    HOSTILE_CONSTANTS,
    _inside,
    _is_good,
    _json_bytes,
    _mutate,
    _paths,
    _snapshot,
    _Warnings,
    _write_image,
    hostile_values,
    image_kinds,
)
from vlsafe.errors import DataError, VlsafeError
from vlsafe.evaluation.benchmarks import figstep, jailbreakv, load_benchmark, mmsafetybench, xstest
from vlsafe.fixtures.benchmarks.figstep import write_figstep
from vlsafe.fixtures.benchmarks.jailbreakv import write_jailbreakv
from vlsafe.fixtures.benchmarks.mmsafetybench import IMAGE_FOLDER, SCENARIOS, write_mmsafetybench
from vlsafe.fixtures.benchmarks.xstest import write_xstest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]
EXAMPLES = settings(FUZZ, max_examples=110)  # per benchmark: the file runs in about a minute or two
OUTSIDE = "__OUTSIDE__"  # the name of real images beside the benchmark folder, which path escapes aim at

# ---------------------------------------------------------------------------------------------- layouts


def _read_csv(path: Path) -> list[list[str]]:
    """The rows of a csv as the standard library reads them (blank lines left out, as the loaders do)."""
    return [row for row in csv.reader(io.StringIO(path.read_text("utf-8-sig"), newline="")) if row]


def _figstep_prompts(data: Path, subsets: list[str]) -> list[list[str]]:
    files = {"safebench": ("safebench", "SafeBench"), "safebench_tiny": ("SafeBench-Tiny", "SafeBench-Tiny")}
    prompts = []
    for subset in subsets:
        name, images = files[subset]
        header, *rows = _read_csv(data / "data" / "question" / f"{name}.csv")
        c, t = header.index("category_id"), header.index("task_id")
        prompts += [[f"data/images/{images}/query_ForbidQI_{row[c]}_{row[t]}_6.png"] for row in rows]
    return prompts


def _xstest_prompts(data: Path, subsets: list[str]) -> list[list[str]]:
    header, *rows = _read_csv(data / "xstest_prompts.csv")
    return [[] for row in rows if row[header.index("label")] in subsets]


def _mmsb_prompts(data: Path, subsets: list[str]) -> list[list[str]]:
    kinds = {"sd": "SD", "sd_typo": "SD_TYPO", "typo": "TYPO"}
    return [
        [f"{IMAGE_FOLDER}/{scenario}/{kinds[subset]}/{key}.jpg"]
        for scenario in SCENARIOS
        for key in json.loads(
            (data / "data" / "processed_questions" / f"{scenario}.json").read_text("utf-8-sig")
        )
        for subset in subsets
    ]


def _jbv_prompts(data: Path, subsets: list[str]) -> list[list[str]]:
    prompts = []
    for subset in subsets:
        header, *rows = _read_csv(data / "JailBreakV_28K" / jailbreakv.FILES[subset])
        prompts += [[f"JailBreakV_28K/{row[header.index('image_path')]}"] for row in rows]
    return prompts


@dataclass(frozen=True)
class Spec:
    """One benchmark: its synthetic copy, the files its subsets read, the prompts those files hold."""

    benchmark: Any
    write: Callable[[Path], Path]
    files: Callable[[list[str]], list[str]]  # chosen subsets -> the data files they read (relative)
    prompts: Callable[[Path, list[str]], list[list[str]]]  # (folder, subsets) -> each prompt's image paths
    escape: Callable[[list[list[str]]], tuple] | None = None  # rows -> an edit whose image path climbs out


def _set_column(column: str, value: str) -> Callable[[list[list[str]]], tuple]:
    return lambda rows: ("set", 0, rows[0].index(column), value)


SPECS = {
    "figstep": Spec(
        figstep.BENCHMARK,
        write_figstep,
        lambda subsets: [f"data/{figstep.FILES[s][0]}" for s in subsets],
        _figstep_prompts,
        _set_column("task_id", f"../../../../{OUTSIDE}"),
    ),
    "xstest": Spec(xstest.BENCHMARK, write_xstest, lambda subsets: ["xstest_prompts.csv"], _xstest_prompts),
    "mmsafetybench": Spec(
        mmsafetybench.BENCHMARK,
        write_mmsafetybench,
        lambda subsets: [f"data/processed_questions/{s}.json" for s in SCENARIOS[:3]],
        _mmsb_prompts,
        lambda records: ("rename", 0, f"../../../../{OUTSIDE}"),  # <images>/<scenario>/SD/<key>.jpg
    ),
    "jailbreakv": Spec(
        jailbreakv.BENCHMARK,
        write_jailbreakv,
        lambda subsets: [f"JailBreakV_28K/{jailbreakv.FILES[s]}" for s in subsets],
        _jbv_prompts,
        _set_column("image_path", f"../../{OUTSIDE}.png"),
    ),
}
_PRISTINE = tempfile.TemporaryDirectory(prefix="vlsafe-fuzz-benchmarks-")


@functools.cache
def pristine(name: str) -> Path:
    """The benchmark's synthetic copy, written once; each example works on a copy of it."""
    return SPECS[name].write(Path(_PRISTINE.name) / name)


@functools.cache
def pristine_images(name: str) -> tuple[str, ...]:
    folder = pristine(name)
    return tuple(
        sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.suffix in (".png", ".jpg", ".jpeg")
        )
    )


# ---------------------------------------------------------------------------------------------- cases

CSV_DAMAGE = (
    "truncate",
    "bad_utf8",
    "nul_byte",
    "bom",
    "empty",
    "json_instead",
    "random_bytes",
    "crlf",
    "header_only",
)
JSON_DAMAGE = ("truncate", "a_list", "scalar", "bad_utf8", "bom", "empty", "nul_byte", "deep", "random_bytes")
hostile_keys = st.one_of(
    st.sampled_from([v for v in HOSTILE_CONSTANTS if isinstance(v, str)]), st.text(max_size=8)
)


@dataclass
class Case:
    """One damaged copy of a benchmark: which subsets are loaded, and what was done to which file."""

    name: str
    subsets: list[str]
    target: str  # the data file the edits and the damage apply to
    edits: list[tuple] = field(default_factory=list)
    damage: tuple[str, int] | None = None
    images: dict[str, str | bytes] = field(default_factory=dict)  # relative image path -> kind
    skip: bool = False
    ensure_ascii: bool = True
    # Filled in when the case is written:
    labels: list[str] = field(default_factory=list)  # ways an error may name an edited record
    damaged: bool = False  # the file no longer parses as a whole (raw bytes in a record count too)


@st.composite
def cases(draw: st.DrawFn, name: str) -> Case:
    spec = SPECS[name]
    subsets = draw(
        st.lists(st.sampled_from(list(spec.benchmark.subsets)), min_size=1, max_size=3, unique=True)
    )
    case = Case(name, subsets, draw(st.sampled_from(spec.files(subsets))))
    case.skip, case.ensure_ascii = draw(st.sampled_from([True, True, False])), draw(st.booleans())
    facets = ["records", "records", "file", "mixed"] + ["images", "escape"] * (spec.escape is not None)
    facet = draw(st.sampled_from(facets))
    json_file = case.target.endswith(".json")
    if facet in ("records", "mixed"):
        for _ in range(draw(st.integers(1, 2))):
            case.edits.append(draw(_json_edit() if json_file else _csv_edit()))
    if facet == "escape":
        case.edits.append(spec.escape(_read_csv(pristine(name) / case.target) if not json_file else []))
    if facet == "file" or (facet == "mixed" and draw(st.integers(0, 3)) == 0):
        case.damage = (
            draw(st.sampled_from(JSON_DAMAGE if json_file else CSV_DAMAGE)),
            draw(st.integers(0, 10_000)),
        )
    if facet in ("images", "mixed") and pristine_images(name):
        chosen = draw(st.lists(st.sampled_from(pristine_images(name)), min_size=1, max_size=3, unique=True))
        case.images = {path: draw(image_kinds) for path in chosen}
    return case


def _csv_edit() -> st.SearchStrategy[tuple]:
    row, column = st.integers(0, 60), st.integers(0, 12)
    return st.one_of(
        st.tuples(st.just("set"), row, column, hostile_values),
        st.tuples(
            st.just("set"), row, column, st.sampled_from(["", " ", "0", "safe", "unsafe", "1_1", "a,b", '"'])
        ),
        st.tuples(st.just("drop_field"), row),
        st.tuples(st.just("extra_field"), row),
        st.tuples(st.just("duplicate"), row),
        st.tuples(st.just("del_column"), column),
        st.tuples(st.just("rename_column"), column, hostile_keys),
        st.tuples(st.just("extra_column")),
    )


def _json_edit() -> st.SearchStrategy[tuple]:
    record = st.integers(0, 60)
    return st.one_of(
        st.tuples(
            st.just("set"),
            record,
            st.integers(0, 20),
            st.sampled_from(["set", "delete", "extra_key"]),
            hostile_values,
        ),
        st.tuples(st.just("rename"), record, hostile_keys),
        st.tuples(st.just("replace"), record, hostile_values),
    )


# ---------------------------------------------------------------------------------------------- writing


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _edit_csv(case: Case, rows: list[list[str]]) -> tuple[list[list[str]], list[int]]:
    """`rows` (header first) with the case's edits, and the data rows they changed (labels left in the case)."""
    header, body = rows[0], rows[1:]
    record_edits = []
    for edit in case.edits:
        kind, *args = edit
        if kind in ("del_column", "rename_column", "extra_column"):
            column = args[0] % len(header) if args else 0
            if kind == "del_column" and len(header) > 1:
                header, body = (
                    header[:column] + header[column + 1 :],
                    [r[:column] + r[column + 1 :] for r in body],
                )
            elif kind == "rename_column":
                header = header[:column] + [_cell(args[1])] + header[column + 1 :]
            elif kind == "extra_column":
                header, body = [*header, "unexpected"], [[*r, "x"] for r in body]
            continue
        if not body:
            continue
        index = args[0] % len(body)
        if kind == "set":
            body[index] = list(body[index])
            body[index][args[1] % len(body[index])] = _cell(args[2])
        elif kind == "drop_field" and len(body[index]) > 1:
            body[index] = body[index][:-1]
        elif kind == "extra_field":
            body[index] = [*body[index], "extra"]
        elif kind == "duplicate":
            body.append(list(body[index]))
            record_edits.append(len(body) - 1)
        record_edits.append(index)
    case.labels = [f"#{i}" for i in record_edits] + [repr(body[i][0])[:10] for i in record_edits if body[i]]
    return [header, *body], record_edits


def _line_ranges(rows: list[list[str]]) -> tuple[str, list[tuple[int, int]]]:
    """The csv text of `rows` and the physical lines each data row spans (as csv.reader counts them)."""
    buffer, ranges = io.StringIO(), []
    writer = csv.writer(buffer)
    writer.writerow(rows[0])
    for row in rows[1:]:
        before = buffer.getvalue()
        writer.writerow(row)
        after = buffer.getvalue()
        lines = (
            len(io.StringIO(before, newline="").readlines()),
            len(io.StringIO(after, newline="").readlines()),
        )
        ranges.append((min(before.count("\n"), lines[0]) + 1, max(after.count("\n"), lines[1])))
    return buffer.getvalue(), ranges


def _write_csv_case(case: Case, path: Path) -> bytes:
    rows, edited = _edit_csv(case, _read_csv(path))
    text, ranges = _line_ranges(rows)
    case.labels += [f"line {n}" for i in edited for n in range(ranges[i][0], ranges[i][1] + 1)]
    data = text.encode("utf-8", "surrogatepass").replace(b"__RAW_BADUTF8__", b"\xff\xfe")
    if case.damage:
        kind, param = case.damage
        at = param % (len(data) + 1)
        data = {
            "truncate": lambda: data[:at],
            "bad_utf8": lambda: data[:at] + b"\xc3\x28" + data[at:],
            "nul_byte": lambda: data[:at] + b"\x00" + data[at:],
            "bom": lambda: b"\xef\xbb\xbf" + data,
            "empty": lambda: b"",
            "json_instead": lambda: json.dumps(rows[1:3]).encode(),
            "random_bytes": lambda: bytes((param * 31 + i * 17) % 256 for i in range(64)),
            "crlf": lambda: data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
            "header_only": lambda: data.split(b"\n", 1)[0] + b"\n",
        }[kind]()
    return data


def _write_json_case(case: Case, path: Path) -> bytes:
    records = json.loads(path.read_text())
    edited = []
    for kind, index, *args in case.edits:
        keys = list(records)
        if not keys:
            break
        key = keys[index % len(keys)]
        edited.append((keys.index(key), key))
        if kind == "set" and isinstance(records[key], dict):
            paths = list(_paths(records[key]))
            path_in, operation, value = paths[args[0] % len(paths)], args[1], copy.deepcopy(args[2])
            records[key] = _mutate(records[key], path_in, operation if path_in else "set", value)
        elif kind == "rename":
            records = {(args[0] if k == key else k): v for k, v in records.items()}
            edited.append((keys.index(key), args[0]))
        elif kind == "replace":
            records[key] = copy.deepcopy(args[0])
    case.labels = [f"#{i}" for i, _ in edited] + [repr(key)[:10] for _, key in edited]
    data = _json_bytes(records, ensure_ascii=case.ensure_ascii)
    if case.damage:
        kind, param = case.damage
        at = param % (len(data) + 1)
        data = {
            "truncate": lambda: data[:at],
            "a_list": lambda: b"[" + data + b"]",
            "scalar": lambda: [b"42", b"null", b'"records"', b"true"][param % 4],
            "bad_utf8": lambda: data[:at] + b"\xc3\x28" + data[at:],
            "bom": lambda: b"\xef\xbb\xbf" + data,
            "empty": lambda: b"",
            "nul_byte": lambda: data[:at] + b"\x00" + data[at:],
            "deep": lambda: b"[" * 100_000 + b"]" * 100_000,
            "random_bytes": lambda: bytes((param * 31 + i * 17) % 256 for i in range(64)),
        }[kind]()
    return data


def _write_case(case: Case, work: Path) -> Path:
    """The damaged copy in `work/data`, and a real image beside it for the path escapes to find."""
    # Hard links: a copy in no time; every file an edit changes is unlinked before it is written.
    data = Path(shutil.copytree(pristine(case.name), work / "data", copy_function=os.link))
    for suffix in ("", ".png", ".jpg"):
        _write_image(work / f"{OUTSIDE}{suffix}", "png")
    path = data / case.target
    written = _write_json_case(case, path) if path.suffix == ".json" else _write_csv_case(case, path)
    path.unlink()
    path.write_bytes(written)
    try:  # a record holding raw bytes (or lone surrogates) spoils the whole file: then the file is named
        text = written.decode("utf-8-sig")
        json.loads(text) if path.suffix == ".json" else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        case.damaged = True
    case.damaged = case.damaged or case.damage is not None
    for image, kind in case.images.items():
        (data / image).unlink()
        _write_image(data / image, kind)
    return data


# ---------------------------------------------------------------------------------------------- running


def run_case(case: Case) -> Any:
    """Load `case` through load_benchmark in a fresh folder and check the property; the dataset or error."""
    case = copy.deepcopy(case)
    with tempfile.TemporaryDirectory(prefix="vlsafe-fuzz-") as tmp:
        work = Path(tmp)
        cache, cwd = work / "cache", work / "cwd"
        cwd.mkdir()
        data = _write_case(case, work)
        before = _snapshot(work)
        logged, vlsafe_logger = _Warnings(), logging.getLogger("vlsafe")
        vlsafe_logger.addHandler(logged)
        try:
            with mock.patch.dict(os.environ, {"VLSAFE_CACHE": str(cache)}), _inside(cwd):
                outcome = load_benchmark(
                    SPECS[case.name].benchmark, data, case.subsets, skip_missing_images=case.skip
                )
        except VlsafeError as error:
            outcome = error
        finally:
            vlsafe_logger.removeHandler(logged)
        after = _snapshot(work)
        assert {p: s for p, s in after.items() if not p.startswith("cache")} == before, (
            "wrote outside the cache"
        )
        if isinstance(outcome, VlsafeError):
            _check_error(case, outcome, data)
        else:
            _check_dataset(case, outcome, logged.messages, data, cache)
        with contextlib.suppress(Exception):  # event() only works inside a hypothesis test
            kinds = sorted({edit[0] for edit in case.edits}) + ([case.damage[0]] if case.damage else [])
            event(
                f"{'DataError' if isinstance(outcome, Exception) else 'loaded'}: {', '.join(kinds) or 'images'}"
            )
        return outcome


def _check_error(case: Case, error: VlsafeError, data: Path) -> None:
    message = str(error)
    assert isinstance(error, DataError), f"{type(error).__name__}: {message}"
    assert 20 < len(message) < 2500, f"message of {len(message)} characters: {message[:300]}"
    names = [Path(case.target).name, *case.images, f"{data}/"]  # the damaged file, or an image in the folder
    assert any(name in message for name in names), f"the message names no file of {names}: {message}"
    records_only = all(edit[0] not in ("del_column", "rename_column", "extra_column") for edit in case.edits)
    if case.edits and records_only and not case.damaged and all(map(_is_good, case.images.values())):
        # load_benchmark names the prompts of an image an edit spoiled by their ids
        labels = [*case.labels, "images of"] if "of records" in message else case.labels
        assert any(label in message for label in labels), f"names no record of {case.labels}: {message}"


def _check_dataset(case: Case, dataset: Any, logged: list[str], data: Path, cache: Path) -> None:
    prompts = SPECS[case.name].prompts(data, case.subsets)  # what the files hold, read with the stdlib
    skips = [m for m in (re.search(r"skipped (\d+) of (\d+)", message) for message in logged) if m]
    if skips:
        assert case.skip and len(skips) == 1 and int(skips[0][2]) == len(prompts), (logged, len(prompts))
        assert len(dataset) == len(prompts) - int(skips[0][1])
    else:
        assert len(dataset) == len(prompts), f"{len(prompts)} prompts in the files, {len(dataset)} loaded"
    if not case.edits and not case.damaged:  # then we know which prompts have a bad image
        bad = sum(any(not _is_good(case.images.get(path, "png")) for path in paths) for paths in prompts)
        assert len(prompts) - len(dataset) == bad
    roots = (data.resolve(), cache.resolve())
    for images in dataset.data.column("images").to_pylist():
        for image in images:
            assert any(Path(image["path"]).resolve().is_relative_to(root) for root in roots), image["path"]
    for row in dataset:  # decodes every image, as generation would
        assert all(image.size[0] > 0 for image in row["images"])
        assert isinstance(row["id"], str) and row["id"] and row["messages"][0]["content"][-1]["text"]


# ---------------------------------------------------------------------------------------------- tests


@EXAMPLES
@given(case=cases("figstep"))
def test_figstep_survives_hostile_files(case: Case) -> None:
    run_case(case)


@EXAMPLES
@given(case=cases("xstest"))
def test_xstest_survives_hostile_files(case: Case) -> None:
    run_case(case)


@settings(EXAMPLES, max_examples=80)  # 42 prompts with images each time: the slowest to load
@given(case=cases("mmsafetybench"))
def test_mmsafetybench_survives_hostile_files(case: Case) -> None:
    run_case(case)


@EXAMPLES
@given(case=cases("jailbreakv"))
def test_jailbreakv_survives_hostile_files(case: Case) -> None:
    run_case(case)


# ---------------------------------------------------------------------------------------------- regressions

REGRESSIONS: list[tuple[str, Case, str | int]] = [
    ("a path climbing to a real image beside the folder", Case("jailbreakv", ["mini"], "JailBreakV_28K/mini_JailBreakV_28K.csv", [("set", 0, 5, f"../../{OUTSIDE}.png")]), r"Record '0' \(#0\) in .*mini_JailBreakV_28K.csv names image '../../__OUTSIDE__.png', which points outside"),
    ("an absolute image path", Case("jailbreakv", ["mini"], "JailBreakV_28K/mini_JailBreakV_28K.csv", [("set", 1, 5, "/etc/passwd")]), r"names image '/etc/passwd', which points outside"),
    ("a question id climbing out", Case("mmsafetybench", ["sd"], "data/processed_questions/01-Illegal_Activitiy.json", [("rename", 0, f"../../../../{OUTSIDE}")]), r"Record '../../../../__OUTSIDE__' \(#0\) in .*01-Illegal_Activitiy.json names image"),
    ("a task id climbing out", Case("figstep", ["safebench"], "data/question/safebench.csv", [("set", 0, 2, f"../../../../{OUTSIDE}")]), r"row #0 in .*safebench.csv: task_id must be a whole number"),
    ("a 2 MB cell", Case("xstest", ["safe"], "xstest_prompts.csv", [("set", 2, 1, "x" * 2_000_000)]), r"xstest_prompts.csv, line 4: not valid CSV \(field larger than field limit"),
    ("a NUL byte in a cell", Case("jailbreakv", ["full"], "JailBreakV_28K/JailBreakV_28K.csv", [("set", 3, 1, "a\x00b")]), r"JailBreakV_28K.csv holds a NUL byte \(line 5\)"),
    ("a row with a field too few", Case("figstep", ["safebench_tiny"], "data/question/SafeBench-Tiny.csv", [("drop_field", 1)]), r"SafeBench-Tiny.csv, line 3: 5 fields where the header has 6"),
    ("a lone surrogate escape in a question", Case("mmsafetybench", ["typo"], "data/processed_questions/01-Illegal_Activitiy.json", [("set", 1, 6, "set", "\ud800")]), r"Record '1' in .*01-Illegal_Activitiy.json holds text that is not valid Unicode"),
    ("a byte-order mark is accepted", Case("xstest", ["safe", "unsafe"], "xstest_prompts.csv", damage=("bom", 0)), 36),
    ("CRLF line ends are accepted", Case("jailbreakv", ["full"], "JailBreakV_28K/JailBreakV_28K.csv", damage=("crlf", 0)), 24),
    ("a header alone gives no prompts", Case("figstep", ["safebench"], "data/question/safebench.csv", damage=("header_only", 0)), 0),
    ("a scenario file holding a list", Case("mmsafetybench", ["sd"], "data/processed_questions/02-HateSpeech.json", damage=("a_list", 0)), r"02-HateSpeech.json must hold a JSON object of questions keyed by id, found list"),
    ("a truncated image skipped and counted", Case("mmsafetybench", ["sd_typo"], "data/processed_questions/01-Illegal_Activitiy.json", images={f"{IMAGE_FOLDER}/03-Malware_Generation/SD_TYPO/0.jpg": "jpeg_truncated"}, skip=True), 13),
    ("a decompression bomb", Case("figstep", ["safebench"], "data/question/safebench.csv", images={"data/images/SafeBench/query_ForbidQI_2_1_6.png": "bomb"}), r"query_ForbidQI_2_1_6.png': too large"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), [r[1:] for r in REGRESSIONS], ids=[r[0] for r in REGRESSIONS])
def test_hostile_file_regressions(case: Case, expected: str | int) -> None:
    outcome = run_case(case)
    if isinstance(expected, int):
        assert not isinstance(outcome, Exception), outcome
        assert len(outcome) == expected
    else:
        assert isinstance(outcome, DataError), f"loaded {outcome}"
        assert re.search(expected, str(outcome)), str(outcome)


def test_the_escape_check_would_catch_a_loader_that_followed_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without resolve_image_path's refusal, the escape facet loads the real image beside the folder, and the
    property sees it: the check is not vacuous."""
    monkeypatch.setattr(jailbreakv, "resolve_image_path", lambda root, relative, record: root / relative)
    case = Case(
        "jailbreakv",
        ["mini"],
        "JailBreakV_28K/mini_JailBreakV_28K.csv",
        [("set", 0, 5, f"../../{OUTSIDE}.png")],
    )
    with pytest.raises(AssertionError, match=OUTSIDE):
        run_case(case)
