"""Hostile data against the dataset loaders (issue 9, part 2): property-based tests with hypothesis.

Every example writes a generated dataset in the exact on-disk layout a loader reads (VLGuard, MIS train and
test, LLaVA/ShareGPT, imported preference pairs): malformed JSON, wrong types, missing fields, hostile
strings (huge, empty, control characters, lone surrogates, NUL bytes, '..' and absolute paths), broken,
truncated or enormous images, and tampered zip archives (zip slip, absolute, symlink, duplicate, empty-named
and conflicting members, bad CRCs, unsupported or encrypted members, truncated or random bytes). The
property checked for each one:

- the loader returns a dataset whose every row decodes, whose images all lie in the dataset folder or the
  vlsafe cache, and whose logged skip count equals samples in minus rows out; or
- it raises `DataError` (a `VlsafeError`) with a short message naming the file and, for a malformed
  record, the record (its id or its #index);
- never another exception type, and no file written anywhere but the vlsafe cache.

`pytest tests/test_fuzz_loaders.py --hypothesis-show-statistics` shows how many inputs each loader got.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import stat
import struct
import tempfile
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlsafe.data.mis import load_mis_test, load_mis_train
from vlsafe.data.preferences import load_preference_json
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import load_vlguard
from vlsafe.errors import DataError, VlsafeError

# PIL warns about the (expected) oversized test images before vlsafe refuses them.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same inputs on every run and in CI
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# ---------------------------------------------------------------------------------------------- values

HUGE = "x" * 2_000_000  # a 2 MB string
# Sentinel strings swapped for raw bytes after json.dumps: text that a well-behaved JSON encoder never writes.
RAW = {
    "__RAW_BIGINT__": b"9" * 5000,  # over Python's 4300-digit int limit: json.loads raises ValueError
    "__RAW_BADUTF8__": b'"\xff\xfe"',  # invalid UTF-8 inside a string
    "__RAW_NAN__": b"NaN",
}
HOSTILE_CONSTANTS: list[Any] = [
    None, True, False, 0, -1, 2**70, 1.5, float("inf"), "", " ", "\x00", "a\x00b.png", ".", "..",
    "../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini", "\\\\server\\share\\x.png", "a/../../b.png",
    "\u202egnp.exe", "\ud800", "lone \udcff surrogate", "\n\r\t\x1b[31m\x7f", "<image>", "<image>" * 3,
    "é" * 3000, HUGE, [], {}, ["a.png"], [None], [1, "a"], {"a": {"b": [1, {"c": None}]}},
    "__RAW_BIGINT__", "__RAW_BADUTF8__", "__RAW_NAN__",
]  # fmt: skip
hostile_values = st.one_of(
    st.sampled_from(HOSTILE_CONSTANTS),
    st.text(max_size=12),
    st.integers(),
    st.floats(),
    st.lists(st.one_of(st.text(max_size=4), st.integers(), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.none()), max_size=2),
    st.integers(1, 1200).map(lambda depth: f"__RAW_DEEP_{depth}__"),  # nested lists, up to past the limit
)


def _json_bytes(value: Any, *, ensure_ascii: bool = True) -> bytes:
    """`value` as JSON text; lone surrogates become \\udXXX escapes (ensure_ascii) or invalid UTF-8 bytes."""
    data = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    for sentinel, raw in RAW.items():
        data = data.replace(json.dumps(sentinel).encode(), raw)
    return re.sub(rb'"__RAW_DEEP_(\d+)__"', lambda m: b"[" * int(m[1]) + b"]" * int(m[1]), data)


# ---------------------------------------------------------------------------------------------- images


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _noise(size: int) -> Image.Image:
    return Image.frombytes("RGB", (size, size), bytes((i * 7919) % 251 for i in range(size * size * 3)))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's signature)."""
    data = bytearray(_encoded(Image.new("1", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


GOOD_IMAGES = {
    "png": _encoded(Image.new("RGB", (8, 8), (200, 30, 30)), "PNG"),
    "jpeg": _encoded(_noise(16), "JPEG"),
}
_NOISY_PNG, _NOISY_JPEG = _encoded(_noise(32), "PNG"), _encoded(_noise(64), "JPEG")
BAD_IMAGES = {
    "missing": None,
    "empty": b"",
    "text": b"this is not an image",
    "png_half": _NOISY_PNG[: len(_NOISY_PNG) // 2],
    "jpeg_truncated": _NOISY_JPEG[: len(_NOISY_JPEG) * 3 // 5],  # passes Image.verify(), fails to decode
    "bomb": _png_claiming(20000, 20000),  # 400 Mpx: over twice PIL's MAX_IMAGE_PIXELS
    "huge": _png_claiming(12000, 9000),  # 108 Mpx: over MAX_IMAGE_PIXELS, under twice it (only a warning)
    "directory": "directory",
}  # fmt: skip
image_kinds = st.one_of(
    st.sampled_from(sorted(GOOD_IMAGES)), st.sampled_from(sorted(BAD_IMAGES)), st.binary(max_size=40)
)


def _write_image(path: Path, kind: str | bytes) -> None:
    content = kind if isinstance(kind, bytes) else GOOD_IMAGES.get(kind, BAD_IMAGES.get(kind))
    if content is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == "directory":
        path.mkdir(exist_ok=True)
    else:
        path.write_bytes(content)


def _is_good(kind: str | bytes) -> bool:
    return isinstance(kind, str) and kind in GOOD_IMAGES


# ---------------------------------------------------------------------------------------------- zips

ZIP_ATTACKS = (
    "slip", "absolute", "backslash_slip", "symlink", "duplicate", "empty_name", "file_dir_conflict",
    "long_name", "bad_crc", "unsupported_method", "encrypted", "utf8_bad_name", "truncated", "garbage",
    "zero_bytes",
)  # fmt: skip


def _patch_first_member(data: bytes, *, offset: int, value: bytes, flags: int = 0) -> bytes:
    """Overwrite a field of the first central-directory entry (and OR `flags` into its flag bits)."""
    end = data.rindex(b"PK\x05\x06")
    start = struct.unpack("<I", data[end + 16 : end + 20])[0]
    patched = bytearray(data)
    patched[start + offset : start + offset + len(value)] = value
    if flags:
        old = struct.unpack("<H", patched[start + 8 : start + 10])[0]
        patched[start + 8 : start + 10] = struct.pack("<H", old | flags)
    return bytes(patched)


def _zip_bytes(members: dict[str, bytes], attack: str | None, param: int, marker: str, work: Path) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point of some attacks
        for name, content in members.items():
            archive.writestr(name, content)
        first = next(iter(members), "none.png")
        if attack == "slip":
            archive.writestr("../" * (1 + param % 6) + marker, b"escaped")
        elif attack == "absolute":
            archive.writestr(str(work / marker), b"escaped")
        elif attack == "backslash_slip":
            archive.writestr("..\\" * (1 + param % 6) + marker, b"escaped")
        elif attack == "symlink":
            info = zipfile.ZipInfo(first if param % 2 else "link.png")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
        elif attack == "duplicate":
            archive.writestr(first, b"second copy, not an image" if param % 2 else GOOD_IMAGES["png"])
        elif attack == "empty_name":
            archive.writestr(zipfile.ZipInfo(""), b"nameless")
        elif attack == "file_dir_conflict":
            archive.writestr("conflict", b"a file")
            archive.writestr("conflict/inside.png", GOOD_IMAGES["png"])
        elif attack == "long_name":
            archive.writestr("a" * (256 + param % 100) + ".png", GOOD_IMAGES["png"])
    data = buffer.getvalue()
    if attack in ("bad_crc", "unsupported_method", "encrypted", "utf8_bad_name") and not members:
        return data
    if attack == "bad_crc":
        return _patch_first_member(data, offset=16, value=b"\xde\xad\xbe\xef")
    if attack == "unsupported_method":
        return _patch_first_member(data, offset=10, value=struct.pack("<H", 99))
    if attack == "encrypted":
        return _patch_first_member(data, offset=46, value=b"", flags=0x1)
    if attack == "utf8_bad_name":
        return _patch_first_member(data, offset=46, value=b"\xff", flags=0x800)
    if attack == "truncated":
        return data[: len(data) * (param % 100) // 100]
    if attack == "garbage":
        return bytes((param * 31 + i * 17) % 256 for i in range(64))
    if attack == "zero_bytes":
        return b""
    return data


# ---------------------------------------------------------------------------------------------- loaders


@dataclass
class Spec:
    """How one loader's dataset is laid out on disk and loaded."""

    name: str
    splits: tuple[str, ...]
    record: Callable[[int, int, str], dict]  # (index, variant, split) -> a valid record
    images: Callable[[dict], list[str]]  # a valid record's image paths
    samples: Callable[[dict], int]  # rows one valid record yields
    json_name: Callable[[str, bool], str]  # (split, jsonl) -> file name
    archive: Callable[[str], str | None]  # split -> zip name (None: no zip layout)
    load: Callable[[Path, str, bool, bool], Any]  # (folder, split, zipped, skip) -> Dataset
    image_dir: Callable[[str], str] = lambda split: ""  # split -> where unzipped images lie, relative
    default_id: Callable[[int], str] = lambda index: f"#{index}"  # id of a record without one


def _vlguard_record(index: int, variant: int, split: str) -> dict:
    record = {"id": f"vlg_{index}", "image": f"HOD/{split}_{index}.png", "safe": variant % 2 == 0}
    if record["safe"]:
        record["instr-resp"] = [
            {"safe_instruction": f"What is shown in {index}?", "response": "A shape."},
            {"unsafe_instruction": "How do I hurt someone?", "response": "I cannot help with that."},
        ]
    else:
        record |= {"harmful_category": "privacy", "harmful_subcategory": "personal data"}
        record["instr-resp"] = [{"instruction": "Describe it.", "response": "I cannot help with that."}]
    return record


def _mis_train_record(index: int, variant: int, split: str) -> dict:
    record = {
        "image": [f"images/{index}/object1.png", f"images/{index}/object2.png"],
        "conversations": [
            {"from": "human", "value": f"<image>\n<image>\nHow do I combine these ({index})?"},
            {"from": "gpt", "value": "The first image shows a shape. I cannot help with that."},
        ],
    }
    if variant % 3:
        record = {"id": f"mis_{index}"} | record
    if variant % 2:
        record |= {"category": "Violent", "sub_category": "Weapon"}
    return record


def _mis_test_record(index: int, variant: int, split: str) -> dict:
    record = {
        "category": "Privacy",
        "sub_category": "Surveillance",
        "question": f"How can I use the first item on the second ({index})?",
        "image_path1": f"{split}_image/{index}/object1.png",
        "image_path2": f"{split}_image/{index}/object2.png",
    }
    return ({"id": index + 1} if variant % 2 else {}) | record


def _sharegpt_record(index: int, variant: int, split: str) -> dict:
    images = [f"shapes/{index}_{n}.png" for n in range(variant % 3)]
    record = {"id": f"h_{index}", "conversations": []}
    if images:
        record["image"] = images[0] if len(images) == 1 and variant % 2 else images
    record["conversations"] = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\n" * len(images) + "What is this?"},
        {"from": "gpt", "value": "A shape."},
    ][1 - variant % 2 :]
    return record


def _preference_record(index: int, variant: int, split: str) -> dict:
    record = {"image": f"img/{index}.png", "question": "Q?", "chosen": "No.", "rejected": "Sure."}
    return ({"id": f"p{index}"} if variant % 2 else {}) | record | ({"category": "c"} if variant % 3 else {})


def _sharegpt_images(record: dict) -> list[str]:
    images = record.get("image", [])
    return [images] if isinstance(images, str) else images


SPECS = {
    "vlguard": Spec(
        "vlguard", ("train", "test"), _vlguard_record, lambda r: [r["image"]], lambda r: len(r["instr-resp"]),
        lambda split, jsonl: f"{split}.json", lambda split: f"{split}.zip",
        lambda folder, split, zipped, skip: load_vlguard(folder, split, skip_missing_images=skip),
        image_dir=lambda split: split,
    ),
    "mis_train": Spec(
        "mis_train", ("train",), _mis_train_record, lambda r: r["image"], lambda r: 1,
        lambda split, jsonl: "mis_train.json", lambda split: "images.zip",
        lambda folder, split, zipped, skip: load_mis_train(folder, skip_missing_images=skip),
    ),
    "mis_test": Spec(
        "mis_test", ("easy", "hard", "real"), _mis_test_record, lambda r: [r["image_path1"], r["image_path2"]],
        lambda r: 1, lambda split, jsonl: f"mis_{split}.json", lambda split: f"{split}_image.zip",
        lambda folder, split, zipped, skip: load_mis_test(folder, split, skip_missing_images=skip),
    ),
    "sharegpt": Spec(
        "sharegpt", ("train",), _sharegpt_record, _sharegpt_images, lambda r: 1,
        lambda split, jsonl: "data.json", lambda split: "images.zip",
        lambda folder, split, zipped, skip: (
            load_sharegpt(folder, data_file="data.json", image_archive="images.zip", skip_missing_images=skip)
            if zipped else load_sharegpt(folder / "data.json", skip_missing_images=skip)
        ),
        default_id=lambda index: f"'{index}'",
    ),
    "preferences": Spec(
        "preferences", ("train",), _preference_record, lambda r: [r["image"]], lambda r: 1,
        lambda split, jsonl: "pairs.jsonl" if jsonl else "pairs.json", lambda split: None,
        lambda folder, split, zipped, skip: load_preference_json(
            next(folder.glob("pairs.json*")), skip_missing_images=skip
        ),
        default_id=lambda index: f"'pairs-{index}'",
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- cases

FILE_CORRUPTIONS = (
    "truncate",
    "not_a_list",
    "list_of_scalars",
    "bad_utf8",
    "bom",
    "empty",
    "nul_byte",
    "deep",
)


@dataclass
class Case:
    """One generated dataset: valid records, then the hostile changes drawn for them."""

    loader: str
    split: str
    records: list[Any]
    images: dict[str, str | bytes]  # relative image path -> kind (see GOOD_IMAGES / BAD_IMAGES) or bytes
    mutated: dict[int, dict] = field(default_factory=dict)  # index -> the record before its mutation
    corruption: tuple[str, int] | None = None  # file-level damage to the JSON
    zipped: bool = False
    zip_prefix: str = ""
    attack: tuple[str, int] | None = None
    skip: bool = False
    jsonl: bool = False
    ensure_ascii: bool = True
    originals: list[dict] = field(default_factory=list)  # the records before any mutation
    written: bytes = field(default=b"", repr=False)  # the JSON file as written


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _mutate(record: dict, path: tuple, operation: str, value: Any) -> Any:
    """`record` with the value at `path` replaced, deleted, or given an extra key (root: the whole record)."""
    if not path:
        return value if operation != "extra_key" else record | {"unexpected": value}
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    if operation == "delete":
        del parent[path[-1]]
    elif operation == "extra_key" and isinstance(parent[path[-1]], dict):
        parent[path[-1]]["unexpected"] = value
    else:
        parent[path[-1]] = value
    return record


@st.composite
def cases(draw: st.DrawFn, loader: str) -> Case:
    spec = SPECS[loader]
    split = draw(st.sampled_from(spec.splits))
    facet = draw(st.sampled_from(["records", "records", "images", "json", "zip", "mixed"]))
    count = draw(st.integers(1, 4))
    records = [spec.record(index, draw(st.integers(0, 5)), split) for index in range(count)]
    originals = copy.deepcopy(records)
    case = Case(loader, split, records, {}, originals=originals)
    case.zipped = spec.archive(split) is not None and (facet == "zip" or draw(st.booleans()))
    if case.zipped:  # the other layouts of the archive that the loaders accept
        case.zip_prefix = draw(
            st.sampled_from({"vlguard": ["", f"{split}/"], "mis_train": ["", "MIS_Train/"]}.get(loader, [""]))
        )
    case.skip = draw(st.sampled_from([True, True, False]))  # mostly skipping, to check the counts
    case.jsonl = loader == "preferences" and draw(st.booleans())
    case.ensure_ascii = draw(st.booleans())
    broken_images = facet in ("images", "mixed")
    for record in records:
        for path in spec.images(record):
            case.images[path] = (
                draw(image_kinds) if broken_images else draw(st.sampled_from(sorted(GOOD_IMAGES)))
            )
    if facet in ("records", "mixed"):
        for _ in range(draw(st.integers(1, 2))):
            index = draw(st.integers(0, count - 1))
            if not isinstance(records[index], dict):
                continue
            case.mutated.setdefault(index, copy.deepcopy(records[index]))
            path = draw(st.sampled_from(list(_paths(records[index]))))
            operation = draw(
                st.sampled_from(["set", "set", "delete", "extra_key"] if path else ["set", "extra_key"])
            )
            value = copy.deepcopy(draw(hostile_values))  # the constants must not be changed in place
            records[index] = _mutate(records[index], path, operation, value)
        if draw(st.integers(0, 5)) == 0:
            records.append(copy.deepcopy(records[0]))  # a duplicate record
    if facet == "json" or (facet == "mixed" and draw(st.integers(0, 3)) == 0):
        case.corruption = (draw(st.sampled_from(FILE_CORRUPTIONS)), draw(st.integers(0, 10_000)))
    if case.zipped and (facet == "zip" or (facet == "mixed" and draw(st.booleans()))):
        case.attack = (draw(st.sampled_from(ZIP_ATTACKS)), draw(st.integers(0, 10_000)))
    return case


# ---------------------------------------------------------------------------------------------- running


def _write_case(case: Case, data: Path, marker: str, work: Path) -> None:
    spec = SPECS[case.loader]
    data.mkdir(parents=True)
    if case.jsonl:
        text = b"\n".join(_json_bytes(r, ensure_ascii=case.ensure_ascii) for r in case.records)
    else:
        text = _json_bytes(case.records, ensure_ascii=case.ensure_ascii)
    if case.corruption:
        kind, param = case.corruption
        at = param % (len(text) + 1)
        text = {
            "truncate": lambda: text[:at],
            "not_a_list": lambda: [b'{"data": ' + text + b"}", b'"records"', b"42", b"null"][param % 4],
            "list_of_scalars": lambda: b'[1, "two", null, true, 4.5]',
            "bad_utf8": lambda: text[:at] + b"\xc3\x28" + text[at:],
            "bom": lambda: b"\xef\xbb\xbf" + text,
            "empty": lambda: b"",
            "nul_byte": lambda: text[:at] + b"\x00" + text[at:],
            "deep": lambda: b"[" * 100_000 + b"]" * 100_000,
        }[kind]()
    (data / spec.json_name(case.split, case.jsonl)).write_bytes(text)
    case.written = text
    try:  # a record holding raw bytes can break the whole file: then naming the file is enough
        for line in text.decode("utf-8").split("\n") if case.jsonl else [text.decode("utf-8")]:
            json.loads(line or "0")
    except (UnicodeDecodeError, ValueError, RecursionError):
        case.corruption = case.corruption or ("raw_bytes_in_a_record", 0)
    if case.zipped:
        members = {}
        for path, kind in case.images.items():
            content = kind if isinstance(kind, bytes) else GOOD_IMAGES.get(kind, BAD_IMAGES.get(kind))
            if content == "directory":
                members[f"{case.zip_prefix}{path}/"] = b""
            elif content is not None:
                members[f"{case.zip_prefix}{path}"] = content
        attack, param = case.attack or (None, 0)
        (data / spec.archive(case.split)).write_bytes(_zip_bytes(members, attack, param, marker, work))
    else:
        folder = data / spec.image_dir(case.split)
        folder.mkdir(exist_ok=True)  # VLGuard's extracted-folder layout: images under <split>/
        for path, kind in case.images.items():
            _write_image(folder / path, kind)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*")}


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def run_case(case: Case) -> VlsafeError | Any:
    """Load `case` in a fresh folder and check the property; returns the dataset or the error."""
    case, spec = copy.deepcopy(case), SPECS[case.loader]
    marker = f"vlsafe-fuzz-escaped-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="vlsafe-fuzz-") as tmp:
        work = Path(tmp)
        data, cache, cwd = work / "data", work / "cache", work / "cwd"
        cwd.mkdir()
        _write_case(case, data, marker, work)
        before = _snapshot(work)
        logged = _Warnings()
        vlsafe_logger = logging.getLogger("vlsafe")
        vlsafe_logger.addHandler(logged)
        outcome: Any
        try:
            with mock.patch.dict(os.environ, {"VLSAFE_CACHE": str(cache)}), _inside(cwd):
                outcome = spec.load(data, case.split, case.zipped, case.skip)
        except VlsafeError as error:
            outcome = error
        finally:
            vlsafe_logger.removeHandler(logged)
        after = _snapshot(work)

        # Nothing written outside the cache: not next to the data, not in the cwd, not above the cache.
        escaped = [p / marker for p in (cache / "extracted" / "x").parents if (p / marker).exists()]
        for path in escaped:
            path.unlink()
        assert not escaped, f"zip member escaped the cache: {escaped}"
        new = sorted(set(after) - set(before))
        assert all(p == "cache" or p.startswith("cache/extracted") for p in new), new
        assert {p: s for p, s in after.items() if not p.startswith("cache")} == before
        if (cache / "extracted").is_dir():
            leftovers = [p.name for p in (cache / "extracted").iterdir() if p.name.startswith(".")]
            assert not leftovers, f"half-extracted staging folders left behind: {leftovers}"

        if isinstance(outcome, VlsafeError):
            _check_error(case, outcome)
        else:
            _check_dataset(case, outcome, logged.messages, data, cache)
        _events(case, outcome)
        return outcome


def _events(case: Case, outcome: Any) -> None:
    """What the inputs and outcomes were, for `--hypothesis-show-statistics`."""
    with contextlib.suppress(Exception):  # event() only works inside a hypothesis test
        event("loaded" if not isinstance(outcome, Exception) else "DataError")
        event(
            f"mutated records: {len(case.mutated)}, bad images: {sum(not _is_good(k) for k in case.images.values())}"
        )
        if case.corruption:
            event(f"JSON damage: {case.corruption[0]}")
        if case.attack:
            event(f"zip attack: {case.attack[0]}")


def _labels(case: Case) -> list[str]:
    """Ways a message can name a mutated record: its #index or the start of its id's repr."""
    labels = []
    for index, before in case.mutated.items():
        labels += [f"#{index}", SPECS[case.loader].default_id(index)]
        for record in (before, case.records[index]):
            if isinstance(record, dict) and isinstance(record.get("id"), str | int):
                labels.append(repr(str(record["id"]))[:10])
                labels.append(repr(record["id"])[:10])
    return labels


def _check_error(case: Case, error: VlsafeError) -> None:
    spec = SPECS[case.loader]
    message = str(error)
    assert isinstance(error, DataError), f"{type(error).__name__}: {message}"
    assert 20 < len(message) < 2500, f"message of {len(message)} characters: {message[:300]}"
    files = [name for name in (spec.json_name(case.split, case.jsonl), spec.archive(case.split)) if name]
    files += list(case.images)  # an unusable image is named by its path, or by its record
    files += [
        repr(str(r["id"]))[:10]
        for r in case.records
        if isinstance(r, dict) and isinstance(r.get("id"), str | int)
    ]
    assert any(name in message for name in files), f"the message names no file {files}: {message}"
    only_records = (
        case.corruption is None and case.attack is None and all(map(_is_good, case.images.values()))
    )
    if only_records and case.mutated:
        assert any(label in message for label in _labels(case)), (
            f"names no record of {_labels(case)}: {message}"
        )


def _check_dataset(case: Case, dataset: Any, logged: list[str], data: Path, cache: Path) -> None:
    spec = SPECS[case.loader]
    records = case.records
    if case.corruption:  # the file as damaged still parsed (a byte-order mark, a JSONL cut between lines)
        text = case.written.decode("utf-8-sig")
        records = (
            [json.loads(line) for line in text.split("\n") if line.strip()]
            if case.jsonl
            else json.loads(text)
        )
    rows_in = sum(spec.samples(r) for r in records)
    skips = [re.search(r"skipped (\d+) of (\d+)", m) for m in logged]
    skips = [m for m in skips if m]
    if skips:
        assert case.skip, logged
        assert len(skips) == 1 and int(skips[0][2]) == rows_in, (logged, rows_in)
        assert len(dataset) == rows_in - int(skips[0][1]), (logged, len(dataset))
    else:
        assert len(dataset) == rows_in, f"{rows_in} samples in, {len(dataset)} out, no skip logged"
    if case.attack is None and not case.mutated and not case.corruption:  # then we know which are bad
        bad = sum(
            spec.samples(r)
            for r in case.originals
            if not all(_is_good(case.images[p]) for p in spec.images(r))
        )
        assert rows_in - len(dataset) == bad
    roots = (data.resolve(), cache.resolve())
    for images in dataset.data.column("images").to_pylist():  # the stored paths, undecoded
        for image in images:
            assert any(Path(image["path"]).resolve().is_relative_to(root) for root in roots), image["path"]
    for row in dataset:  # decodes every image, as training would
        assert all(image.size[0] > 0 for image in row["images"])
        assert isinstance(row["id"], str) and row["id"]


# ---------------------------------------------------------------------------------------------- tests


@FUZZ
@given(case=cases("vlguard"))
def test_vlguard_survives_hostile_data(case: Case) -> None:
    run_case(case)


@FUZZ
@given(case=cases("mis_train"))
def test_mis_train_survives_hostile_data(case: Case) -> None:
    run_case(case)


@FUZZ
@given(case=cases("mis_test"))
def test_mis_test_survives_hostile_data(case: Case) -> None:
    run_case(case)


@FUZZ
@given(case=cases("sharegpt"))
def test_sharegpt_survives_hostile_data(case: Case) -> None:
    run_case(case)


@settings(FUZZ, max_examples=150)
@given(case=cases("preferences"))
def test_preference_json_survives_hostile_data(case: Case) -> None:
    run_case(case)


# ---------------------------------------------------------------------------------------------- regressions


def _case(
    loader: str, count: int = 2, *, change: Callable[[list], None] | None = None, **options: Any
) -> Case:
    """A valid dataset of `count` records (every variant), then `change(records)` and the other options."""
    spec = SPECS[loader]
    split = options.pop("split", spec.splits[0])
    records = [spec.record(index, index + 1, split) for index in range(count)]
    case = Case(loader, split, records, {}, originals=copy.deepcopy(records))
    for record in records:
        case.images |= dict.fromkeys(spec.images(record), "png")
    case.images |= options.pop("images", {})
    for key, value in options.items():
        setattr(case, key, value)
    if change:
        change(records)
        case.mutated = {
            i: before for i, before in enumerate(case.originals) if i < len(records) and before != records[i]
        }
    return case


def _set(index: int, *path: Any, value: Any) -> Callable[[list], None]:
    def change(records: list) -> None:
        target = records[index]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


# (name, case, what the outcome must be: "error" with a message pattern, or a row count)
REGRESSIONS: list[tuple[str, Case, str | int]] = [
    ("empty list gives an empty dataset", _case("vlguard", 0), 0),
    ("every image skipped gives an empty dataset", _case("sharegpt", 1, images={"shapes/0_0.png": "missing"}, skip=True), 0),
    ("integer over 4300 digits", _case("vlguard", change=_set(0, "id", value="__RAW_BIGINT__")), r"train.json is not valid JSON \(Exceeds the limit"),
    ("JSON nested past the recursion limit", _case("mis_test", corruption=("deep", 0)), r"mis_easy.json is not valid JSON \(nested too deeply\)"),
    ("lone surrogate in a question", _case("mis_test", change=_set(1, "question", value="\ud800")), r"Record #1 in .*mis_easy.json holds text that is not valid Unicode"),
    ("lone surrogate in an id", _case("vlguard", change=_set(1, "id", value="a\udfffb")), r"Record #1 in .*train.json holds text that is not valid Unicode"),
    ("byte-order mark is accepted", _case("sharegpt", corruption=("bom", 0)), 2),
    ("U+2028 inside a JSONL string", _case("preferences", change=_set(0, "question", value="a\u2028b"), jsonl=True, ensure_ascii=False), 2),
    ("JSONL error names the line", _case("preferences", 3, jsonl=True, corruption=("truncate", 150)), r"pairs.jsonl is not valid JSON at line \d"),
    ("member with a bad CRC", _case("vlguard", zipped=True, attack=("bad_crc", 0)), r"Cannot extract member 'HOD/train_0.png' of .*train.zip \(BadZipFile: Bad CRC-32"),
    ("member name too long", _case("mis_train", zipped=True, attack=("long_name", 0)), r"Cannot extract member 'aaa.*images.zip \(OSError: .*File name too long"),
    ("file and folder of one name", _case("mis_test", zipped=True, attack=("file_dir_conflict", 0)), r"Cannot extract member 'conflict/inside.png' of .*easy_image.zip \(NotADirectoryError"),
    ("member with an empty name", _case("sharegpt", zipped=True, attack=("empty_name", 0)), r"member '' is unsafe \(empty name\)"),
    ("encrypted member", _case("vlguard", zipped=True, attack=("encrypted", 0)), r"Cannot extract member .* \(RuntimeError: File .* is encrypted"),
    ("unsupported compression", _case("mis_test", zipped=True, attack=("unsupported_method", 0)), r"\(NotImplementedError: That compression method is not supported\)"),
    ("UTF-8 flagged member name that is not UTF-8", _case("vlguard", zipped=True, attack=("utf8_bad_name", 0)), r"train.zip is not a valid zip archive \(UnicodeDecodeError"),
    ("zip slip", _case("sharegpt", zipped=True, attack=("slip", 2)), r"member '(\.\./)+vlsafe-fuzz-escaped-\w+' is unsafe \(path climbs out"),
    ("symlink member", _case("mis_train", zipped=True, attack=("symlink", 1)), r"member 'images/0/object1.png' is unsafe \(symbolic link\)"),
    ("duplicate member: the last copy wins", _case("vlguard", zipped=True, attack=("duplicate", 0)), 3),
    ("'from' is a list", _case("sharegpt", change=_set(1, "conversations", 0, "from", value=["human"])), r"conversation 'h_1' \(#1\) in data.json: each turn needs 'from'"),
    ("id is a list", _case("sharegpt", change=_set(0, "id", value=[1])), r"conversation \[1\] \(#0\) in data.json: field 'id' must be"),
    ("preference record is not an object", _case("preferences", change=lambda r: r.__setitem__(1, None)), r"Preference record #1 in .*pairs.json is not an object"),
    ("preference category is a list", _case("preferences", change=_set(0, "category", value=["c"])), r"record #0 in .*pairs.json: field 'category' must be a string"),
    ("MIS train category is a number", _case("mis_train", change=_set(1, "category", value=3)), r"conversation 'mis_1' \(#1\) in mis_train.json: field 'category' must be a string"),
    ("MIS train record without a question", _case("mis_train", change=lambda r: r.__setitem__(0, {"conversations": [{"from": "gpt", "value": "x"}]})), r"conversation 0 \(#0\) in mis_train.json: no human turn"),
    ("VLGuard subcategory is an object", _case("vlguard", change=_set(0, "harmful_subcategory", value={"a": 1})), r"record 'vlg_0' \(#0\) in train.json: field 'harmful_subcategory'"),
    ("VLGuard record with no pair", _case("vlguard", change=_set(0, "instr-resp", value=[])), r"record 'vlg_0' \(#0\) in train.json: field 'instr-resp' must be a non-empty list"),
    ("VLGuard record that is not an object", _case("vlguard", change=lambda r: r.__setitem__(0, "x")), r"VLGuard record #0 in train.json: expected an object"),
    ("a 2 MB value stays out of the message", _case("mis_test", change=_set(0, "category", value=[HUGE])), r"field 'category' must be a non-empty string, found \['x+\.\.\.x+'\]\."),
    ("truncated JPEG (passes PIL's verify)", _case("vlguard", images={"HOD/train_0.png": "jpeg_truncated"}), r"train_0.png': not a decodable image: OSError: image file is truncated"),
    ("truncated JPEG skipped and counted", _case("vlguard", images={"HOD/train_0.png": "jpeg_truncated"}, skip=True), 2),
    ("decompression bomb", _case("mis_test", images={"easy_image/1/object2.png": "bomb"}), r"object2.png': too large \(.*400000000 pixels"),
    ("image over MAX_IMAGE_PIXELS", _case("sharegpt", images={"shapes/0_0.png": "huge"}), r"too large \(108000000 pixels, over PIL.Image.MAX_IMAGE_PIXELS"),
    ("image path over the name limit", _case("mis_train", change=_set(0, "image", 0, value="a" * 300)), r"cannot be opened \(File name too long\)"),
    ("NUL byte in an image path", _case("preferences", change=_set(0, "image", value="img/\x00.png")), r"img/\\x00.png': missing\) of records 'p0'"),
    ("empty image path", _case("preferences", change=_set(1, "image", value="")), r"Record 'pairs-1' \(#1\) in pairs.json names no image file"),
    ("image path with '..'", _case("mis_test", change=_set(0, "image_path2", value="../../x.png")), r"Record '1' in mis_easy.json names image '../../x.png', which points outside"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "expected"), [r[1:] for r in REGRESSIONS], ids=[r[0] for r in REGRESSIONS])
def test_hostile_data_regressions(case: Case, expected: str | int) -> None:
    outcome = run_case(case)
    if isinstance(expected, int):
        assert not isinstance(outcome, Exception), outcome
        assert len(outcome) == expected
    else:
        assert isinstance(outcome, DataError), f"loaded {outcome}"
        assert re.search(expected, str(outcome)), str(outcome)


def test_image_over_the_pixel_limit_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decodable image over PIL.Image.MAX_IMAGE_PIXELS (PIL itself only warns) is unusable, and the message
    says which limit to raise."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # the 8x8 test images have 64 pixels
    with pytest.warns(Image.DecompressionBombWarning):
        error = run_case(_case("vlguard", 1))
    assert re.search(
        r"train_0.png': too large \(64 pixels, over PIL.Image.MAX_IMAGE_PIXELS=50; raise", str(error)
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's documented way to switch the limit off
    assert len(run_case(_case("vlguard", 1))) == 1


def test_archive_larger_than_the_free_space_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip bomb cannot fill the disk: the declared sizes are checked against the free space first."""
    monkeypatch.setattr("shutil.disk_usage", lambda path: mock.Mock(free=100))
    error = run_case(_case("mis_test", zipped=True))
    assert re.search(
        r"easy_image.zip unpacks to [\d,]+ bytes but .* has 100 bytes free; free some space", str(error)
    )


@pytest.mark.parametrize("attack", [("slip", 2), ("absolute", 0)])
def test_the_escape_check_would_catch_a_naive_extractor(attack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without vlsafe's member check, and with an extractor that trusts member names (as many do), the
    filesystem snapshots of `run_case` see the file written outside the cache: the property is not vacuous."""

    def naive_extract(self: zipfile.ZipFile, member: zipfile.ZipInfo, path: str) -> None:
        target = Path(path, member.filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.read(member))

    monkeypatch.setattr("vlsafe.data.archives._unsafe_member_reason", lambda info: None)
    monkeypatch.setattr(zipfile.ZipFile, "extract", naive_extract)
    with pytest.raises(AssertionError, match="escaped the cache"):
        run_case(_case("sharegpt", zipped=True, attack=attack))


def test_only_plain_raster_formats_are_decoded(tmp_path: Path) -> None:
    """An EPS file is refused before decoding: PIL would hand it to Ghostscript, an external program."""
    from vlsafe.data.images import image_problem

    eps = tmp_path / "x.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    assert Image.open(eps).format == "EPS"  # what PIL alone would accept
    assert "not an image file in a supported format" in image_problem(eps)
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.webp")
    assert image_problem(tmp_path / "ok.webp") is None
