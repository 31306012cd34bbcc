"""MIS test (Ding et al., 2025), ``Tuwhy/MIS_Test``: subsets ``easy``, ``hard`` and ``real`` (see
`vlsafe.data.mis.load_mis_test` for the layout). Every prompt is harmful: the harm appears only from its two
images together, so each is scored as ASR, and with a judge that sees both images as RSR/RR/HR."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlsafe.data.formats import user_text
from vlsafe.data.mis import MIS_TEST_REPO, TEST_SPLITS, load_mis_test
from vlsafe.evaluation.benchmarks.base import Benchmark, image_paths, prompt_row


def load_prompts(
    source: str | Path, subsets: Sequence[str], *, revision: str | None, references: Path | None = None
) -> list[dict[str, Any]]:
    """The chosen MIS test splits as prompt rows (two images, then the question)."""
    rows = []
    for split in subsets:
        prompts = load_mis_test(source, split, revision=revision)
        rows += [
            prompt_row(
                id=row["id"],
                subset=split,
                text=user_text(row["messages"]),
                images=paths,
                category=row["category"],
            )
            for row, paths in zip(prompts, image_paths(prompts), strict=True)
        ]
    return rows


BENCHMARK = Benchmark(
    name="mis",
    title="MIS test",
    subsets=dict.fromkeys(TEST_SPLITS, True),
    load=load_prompts,
    published=f"hf:{MIS_TEST_REPO}",
    licence="see the dataset card",
    paper_judge="GPT-4o judge: ASR, and RSR/RR/HR by how well the answer perceives both images",
    hub_id=MIS_TEST_REPO,
    fetches_itself=True,
    checks_images=False,
)
