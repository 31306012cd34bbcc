"""Preference pairs as a Hub dataset: a self-contained folder, published in one commit, so a DPO run's pairs can
be inspected, reused offline and loaded with ``load_dataset("<user>/<name>")``.

The folder holds what `Dataset.push_to_hub` uploads: parquet shards ``data/train-0000i-of-0000n.parquet`` with the
images embedded (datasets' own `embed_table_storage` step) and a dataset card (`huggingface_hub.DatasetCard`) whose
front matter carries the ``configs`` and ``dataset_info`` (features, sizes) that the Hub and `load_dataset` read.
It adds the card's text: how the pairs were built, their counts, and a notice that the prompts include harmful
requests. `push_preference_pairs` uploads that folder in one commit. `Dataset.push_to_hub` itself does not do the
push because on a new repo it commits a card with front matter only (datasets 5.2 writes
``DatasetCard("---\\n<metadata>\\n---\\n")`` when the repo has no README yet), so the text would come a commit
later; here a revision of the pairs is complete, card included, or absent.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

from datasets import Dataset, DatasetInfo, SplitDict, SplitInfo
from datasets.info import DatasetInfosDict
from datasets.table import embed_table_storage
from huggingface_hub import DatasetCard, DatasetCardData, HfApi, get_token
from huggingface_hub.constants import REPOCARD_NAME
from huggingface_hub.errors import HfHubHTTPError

from vlsafe.errors import VlsafeError, hub_error

logger = logging.getLogger(__name__)

DATA_DIR, SPLIT = "data", "train"
MAX_SHARD_BYTES = 500 * 1024 * 1024  # Dataset.push_to_hub's default max_shard_size
CARD_TEMPLATE = """---
{{ card_data }}
---

# Safety preference pairs (vlsafe)

DPO pairs for vision-language safety tuning, built by `recipes/dpo_safety.py` from {{ source }}.

- Harmful prompts: **chosen** = the reference refusal; **rejected** = the policy model's own answer when the
  keyword judge found that it complied (`rejected_source=on_policy`), else a fixed compliant answer
  (`synthetic`).
- Safe prompts: **chosen** = the reference answer; **rejected** = the policy's own refusal (`on_policy`),
  else a refusal template (`template`).

| kind | rejected_source | pairs |
|---|---|---|
{% for (kind, rejected), n in counts %}| {{ kind }} | {{ rejected }} | {{ n }} |
{% endfor %}
Columns: `images`, `prompt`, `chosen`, `rejected` (TRL's conversational vision preference format) and the
provenance columns `source`, `id`, `kind`, `safe`, `category`, `subcategory`, `chosen_source`,
`rejected_source`. The prompts include harmful requests (and their images, if the source has harmful images):
use for safety research and training only.
"""


def save_preference_pairs(pairs: Dataset, folder: str | Path, *, source: str, license: str = "other") -> Path:
    """Write `pairs` to `folder` as a Hub dataset: ``data/train-*.parquet`` with the images embedded (shards of
    at most 500 MB, as `Dataset.push_to_hub` cuts them) and README.md, its dataset card."""
    folder = Path(folder)
    # Embed the image bytes (the in-memory dataset only holds paths) so the parquet files stand alone.
    embedded = pairs.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    shards = max(1, math.ceil(embedded.data.nbytes / MAX_SHARD_BYTES))
    (folder / DATA_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (folder / DATA_DIR).glob(f"{SPLIT}-*.parquet"):  # an earlier save with other shards
        stale.unlink()
    for index in range(shards):
        path = folder / DATA_DIR / f"{SPLIT}-{index:05d}-of-{shards:05d}.parquet"
        embedded.shard(shards, index, contiguous=True).to_parquet(path)
    download_size = sum(path.stat().st_size for path in (folder / DATA_DIR).glob(f"{SPLIT}-*.parquet"))
    card = pairs_card(pairs, source=source, license=license, sizes=(download_size, embedded.data.nbytes))
    card.save(folder / REPOCARD_NAME)
    logger.info("Saved %d preference pairs to %s (%d parquet shard(s))", len(pairs), folder, shards)
    return folder


def pairs_card(pairs: Dataset, *, source: str, license: str, sizes: tuple[int, int]) -> DatasetCard:
    """The dataset card of `pairs`: front matter as `Dataset.push_to_hub` writes it (`configs`, `dataset_info`
    with the features and the (parquet, in-memory) byte `sizes`), then how the pairs were made and their counts."""
    download_size, dataset_size = sizes
    data = DatasetCardData(
        license=license,
        task_categories=["image-text-to-text"],
        tags=["vlsafe", "safety", "dpo", "preference"],
        configs=[
            {"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}
        ],
    )
    splits = SplitDict()
    splits.add(SplitInfo(name=SPLIT, num_bytes=dataset_size, num_examples=len(pairs)))
    info = DatasetInfo(
        features=pairs.features, splits=splits, download_size=download_size, dataset_size=dataset_size
    )
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    counts = sorted(Counter(zip(pairs["kind"], pairs["rejected_source"], strict=True)).items())
    return DatasetCard.from_template(data, template_str=CARD_TEMPLATE, source=source, counts=counts)


def push_preference_pairs(
    folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False
) -> str:
    """Publish a folder written by `save_preference_pairs` to the dataset repo `repo_id` in one commit (the repo
    is created if needed; shards of an earlier push that this one no longer has are removed in that commit) and
    return the commit id."""
    folder = Path(folder)
    if not (folder / REPOCARD_NAME).is_file() or not any((folder / DATA_DIR).glob(f"{SPLIT}-*.parquet")):
        raise VlsafeError(
            f"{folder} holds no {REPOCARD_NAME} and {DATA_DIR}/{SPLIT}-*.parquet: write it with "
            "save_preference_pairs first."
        )
    api = HfApi(token=token or get_token())
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            allow_patterns=[REPOCARD_NAME, f"{DATA_DIR}/*.parquet"],
            delete_patterns=[f"{DATA_DIR}/*.parquet"],
            commit_message="Upload safety preference pairs with vlsafe",
        )
    except HfHubHTTPError as error:
        raise hub_error(
            error, repo_id, "push the preference pairs to", repo_type="dataset", write=True
        ) from None
    logger.info("Pushed preference pairs to %s", info.commit_url)
    return info.oid
