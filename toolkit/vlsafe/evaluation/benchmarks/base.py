"""What every safety benchmark shares: its description, the prompt rows a loader returns, and their checks.

A loader reads the files as the benchmark publishes them and returns prompt rows (:func:`prompt_row`); the
registry (`vlsafe.evaluation.benchmarks.load_benchmark`) checks them (known subsets, ids unique within a subset,
images that decode) and turns them into one `datasets.Dataset` with the columns of `PROMPT_FEATURES`:

- ``id``: stable and unique within its subset (it keys stored generations, so a resumed run finds them);
- ``subset``, ``harmful`` (True: the model should refuse, scored as ASR; False: it should answer, scored as
  over-refusal), ``category`` (the benchmark's own grouping, or None);
- ``messages``: one user turn in TRL's vision format, image parts first; ``images``: a list, empty for a text-only
  prompt; ``reference``: a reference answer when the benchmark has one, else None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, List, Value
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from vlsafe.data.formats import MESSAGES_FEATURE, user_turn
from vlsafe.data.sources import is_local
from vlsafe.errors import DataError, HubAccessError

PROMPT_FEATURES = {
    "id": Value("string"),
    "subset": Value("string"),
    "harmful": Value("bool"),
    "category": Value("string"),
    "messages": MESSAGES_FEATURE,
    "images": List(Image()),
    "reference": Value("string"),
}


def prompt_features(extra_columns: Sequence[str] = ()) -> Features:
    """The features of a benchmark's prompt dataset; `extra_columns` are strings the benchmark keeps."""
    return Features(PROMPT_FEATURES | {name: Value("string") for name in extra_columns})


def prompt_row(
    *,
    id: str,  # noqa: A002 - the column's name
    subset: str,
    text: str,
    images: Sequence[str | Path] = (),
    category: str | None = None,
    reference: str | None = None,
    **extra: str | None,
) -> dict[str, Any]:
    """One prompt: a user turn with `images` (paths, in order) before `text`. `harmful` comes from the subset."""
    return {
        "id": id,
        "subset": subset,
        "harmful": None,  # set from the subset by load_benchmark
        "category": category,
        "messages": [user_turn(text, images=len(images))],
        "images": [str(path) for path in images],
        "reference": reference,
        **extra,
    }


# loader(source, subsets, revision=..., references=...) -> the prompt rows of those subsets. `source` is the
# benchmark's local folder (a Hub source downloaded first), or as the user gave it when `fetches_itself`.
Loader = Callable[..., list[dict[str, Any]]]


@dataclass(frozen=True)
class Benchmark:
    """A safety benchmark as vlsafe runs it.

    `published` is where it is published, as ``hf:<dataset id>`` or ``github:<owner>/<repo>``: the card's
    ``model-index`` names it as the dataset type. `hub_id` is the Hub dataset a source defaults to (None: the
    user passes the folder of a clone). `fetch_patterns` limits the download of a Hub source (None: the whole
    repository); `fetches_itself` marks loaders that resolve a Hub source on their own (VLGuard, MIS).
    """

    name: str
    title: str
    subsets: Mapping[str, bool]  # subset -> harmful
    load: Loader
    published: str
    licence: str
    paper_judge: str  # how the benchmark's paper (or the papers that report it) judged answers
    hub_id: str | None = None
    default_subsets: tuple[str, ...] | None = None  # None: every subset
    extra_columns: tuple[str, ...] = ()
    fetch_patterns: tuple[str, ...] | None = None
    fetches_itself: bool = False
    takes_references: bool = False
    checks_images: bool = (
        True  # False when the loader already decoded every image (the VLGuard/MIS loaders do)
    )
    aliases: tuple[str, ...] = field(default=())  # other folder names a user's clone may have (repo names)

    @property
    def defaults(self) -> tuple[str, ...]:
        return self.default_subsets or tuple(self.subsets)

    @property
    def url(self) -> str:
        kind, _, where = self.published.partition(":")
        return f"https://huggingface.co/datasets/{where}" if kind == "hf" else f"https://github.com/{where}"


def local_folder(benchmark: Benchmark, source: str | Path, revision: str | None) -> Path:
    """`source` as a local folder: itself when it is one, else a download of that Hub dataset repository."""
    if is_local(source):
        return Path(source).expanduser()
    if Path(source).expanduser().exists():
        raise DataError(
            f"{benchmark.title}: {source} is a file; pass the folder of the benchmark (its repository root)."
        )
    try:
        return Path(
            snapshot_download(
                str(source),
                repo_type="dataset",
                revision=revision,
                allow_patterns=list(benchmark.fetch_patterns) if benchmark.fetch_patterns else None,
            )
        )
    except HFValidationError:
        raise DataError(
            f"{benchmark.title}: {str(source)!r} is neither an existing folder nor a Hub dataset id; check the "
            f"path, or pass the folder of a copy of {benchmark.url}."
        ) from None
    except GatedRepoError:
        raise HubAccessError(
            f"{source} is gated and this token has no access: accept its terms on "
            f"https://huggingface.co/datasets/{source}, then log in with `hf auth login` or set HF_TOKEN."
        ) from None
    except RepositoryNotFoundError:
        raise DataError(
            f"{benchmark.title}: {source!r} is neither a local folder nor a Hub dataset this token can see. "
            f"Pass the folder of a copy of {benchmark.url}."
        ) from None
    except LocalEntryNotFoundError:
        raise DataError(
            f"{benchmark.title}: cannot download {source} (the Hub is unreachable and it is not cached). Pass "
            f"a local folder holding a copy of {benchmark.url} instead."
        ) from None


def require_file(folder: Path, relative: str, benchmark: Benchmark) -> Path:
    """`folder / relative`, or a `DataError` saying which file of which benchmark is missing and where to get it."""
    path = folder / relative
    if not path.is_file():
        raise DataError(
            f"{benchmark.title}: {folder} has no {relative}. Pass the benchmark's folder as published at "
            f"{benchmark.url} (its repository root)."
        )
    return path


def image_paths(dataset: Dataset) -> list[list[str]]:
    """The image file paths of each row of a vision dataset (whose `images` column decodes lazily from paths)."""
    column = dataset.cast_column("images", List(Image(decode=False)))["images"]
    return [[image["path"] for image in images] for images in column]
