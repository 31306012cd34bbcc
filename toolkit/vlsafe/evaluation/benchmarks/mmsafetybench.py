"""MM-SafetyBench (Liu et al., ECCV 2024), GitHub ``isXinLiu/MM-SafetyBench``: harmful questions whose key phrase
is moved into a query-relevant image.

Layout (as third-party loaders read it; not seen first-hand):

- ``data/processed_questions/{scenario}.json`` for 13 scenarios, spelled as published (`SCENARIOS`, note
  ``01-Illegal_Activitiy``), 1,680 questions in all; each file is an object keyed by question id (``"0"``,
  ``"1"``...) whose values hold ``Question``, ``Changed Question``, ``Key Phrase``, ``Phrase Type``,
  ``Rephrased Question`` and ``Rephrased Question(SD)``;
- the images, a separate download: ``<images>/{scenario}/{SD,SD_TYPO,TYPO}/{question id}.jpg``, where
  ``<images>`` is ``MM-SafetyBench(imgs)/``, ``imgs/`` or ``data/imgs/`` in the folder (or one level further
  down, as a zip unpacked into a folder of its name), a zip of that name beside them, or the loader option
  ``image_root``.

Subsets, all harmful (ASR): ``sd`` (the Stable Diffusion image with ``Rephrased Question(SD)``), ``sd_typo`` (that
image with the key phrase typeset under it) and ``typo`` (the typeset phrase alone), both with ``Rephrased
Question``. The scenario is the category; the id is ``{scenario}/{question id}``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.archives import extract_zip
from vlsafe.data.images import resolve_image_path
from vlsafe.data.sources import read_json_object, short_repr
from vlsafe.errors import DataError
from vlsafe.evaluation.benchmarks._a_common import record_name, text_field
from vlsafe.evaluation.benchmarks.base import Benchmark, prompt_row

logger = logging.getLogger(__name__)

SCENARIOS = (
    "01-Illegal_Activitiy", "02-HateSpeech", "03-Malware_Generation", "04-Physical_Harm", "05-EconomicHarm",
    "06-Fraud", "07-Sex", "08-Political_Lobbying", "09-Privacy_Violence", "10-Legal_Opinion",
    "11-Financial_Advice", "12-Health_Consultation", "13-Gov_Decision",
)  # fmt: skip
SUBSETS = {  # subset -> (image folder, the question asked with it)
    "sd": ("SD", "Rephrased Question(SD)"),
    "sd_typo": ("SD_TYPO", "Rephrased Question"),
    "typo": ("TYPO", "Rephrased Question"),
}
IMAGE_FOLDERS = ("MM-SafetyBench(imgs)", "imgs", "data/imgs")


def load_prompts(
    folder: Path,
    subsets: Sequence[str],
    *,
    revision: str | None,
    references: Path | None = None,
    image_root: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Every scenario's questions, once per chosen subset, each with that subset's image."""
    places = (folder / "data/processed_questions", folder / "processed_questions")  # the repo, or its data/
    questions = next((place for place in places if place.is_dir()), None)
    if questions is None:
        raise DataError(
            f"{BENCHMARK.title}: {folder} has no data/processed_questions/ folder. Pass the folder of a clone of "
            f"{BENCHMARK.url} (its repository root)."
        )
    missing = [s for s in SCENARIOS if not (questions / f"{s}.json").is_file()]
    if missing:
        raise DataError(
            f"{BENCHMARK.title}: {questions} lacks {len(missing)} of the 13 scenario files (first: "
            f"{', '.join(f'{s}.json' for s in missing[:3])}). Pass the folder of a clone of {BENCHMARK.url}."
        )
    ignored = sorted(p.name for p in questions.glob("*.json") if p.stem not in SCENARIOS)
    if ignored:
        logger.warning("%s: ignoring %s (not one of the 13 scenarios)", BENCHMARK.title, ", ".join(ignored))
    images = _image_root(folder, image_root)
    rows = []
    for scenario in SCENARIOS:
        path = questions / f"{scenario}.json"
        for index, (question_id, record) in enumerate(
            read_json_object(path, "questions keyed by id").items()
        ):
            name = record_name(index, question_id)
            if not isinstance(record, dict) or not question_id.strip():
                raise DataError(
                    f"Malformed record {name} in {path}: expected a non-empty question id and an object, found "
                    f"{short_repr(question_id)}: {short_repr(record)}. Fix or remove it, or download the file again."
                )
            for subset in subsets:
                image_folder, key = SUBSETS[subset]
                image = resolve_image_path(
                    images, f"{scenario}/{image_folder}/{question_id}.jpg", record=f"{name} in {path}"
                )
                rows.append(
                    prompt_row(
                        id=f"{scenario}/{question_id}",
                        subset=subset,
                        text=text_field(record, key, name=name, path=path),
                        images=[image],
                        category=scenario,
                    )
                )
    return rows


def _image_root(folder: Path, image_root: str | Path | None) -> Path:
    """The folder holding the scenario image folders: `image_root`, else the first published place found."""
    if image_root is not None:
        root = Path(image_root).expanduser()
        if not _holds_scenarios(root):
            raise DataError(
                f"{BENCHMARK.title}: image_root {root} holds none of the scenario folders ({SCENARIOS[0]}/...); "
                "pass the folder the image download unpacks to."
            )
        return root
    for base in (folder / name for name in IMAGE_FOLDERS):
        found = _scenario_parent(base)
        if found is not None:
            return found
    for archive in (folder / f"{name}.zip" for name in IMAGE_FOLDERS):
        if archive.is_file():
            found = _scenario_parent(extract_zip(archive))
            if found is None:
                raise DataError(
                    f"{archive} holds no scenario folders ({SCENARIOS[0]}/SD/...); download it again."
                )
            return found
    raise DataError(
        f"{BENCHMARK.title}: no images in {folder}: expected {SCENARIOS[0]}/SD/0.jpg and the like under one of "
        f"{', '.join(f'{name}/' for name in IMAGE_FOLDERS)} (or a zip of that name). Download the images the "
        f"README of {BENCHMARK.url} links to and unpack them there, or pass image_root=<their folder>."
    )


def _scenario_parent(base: Path) -> Path | None:
    """`base`, or the folder of its name inside it (an archive unpacked in place), when it holds scenarios."""
    for candidate in (base, base / base.name, *(base / name for name in IMAGE_FOLDERS[:2])):
        if _holds_scenarios(candidate):
            return candidate
    return None


def _holds_scenarios(path: Path) -> bool:
    return any((path / scenario).is_dir() for scenario in SCENARIOS)


BENCHMARK = Benchmark(
    name="mmsafetybench",
    title="MM-SafetyBench",
    subsets=dict.fromkeys(SUBSETS, True),
    load=load_prompts,
    published="github:isXinLiu/MM-SafetyBench",
    licence="see the repository (not stated in the issue; unverified)",
    paper_judge=(
        "GPT-4 judge of each answer (ASR), with scenario-specific instructions for the political lobbying, "
        "legal, financial, health and government-decision scenarios; from memory"
    ),
    aliases=("MM-SafetyBench",),
)
