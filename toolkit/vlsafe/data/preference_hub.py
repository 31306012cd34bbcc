"""Save preference pairs as a self-contained Hub dataset folder (parquet with the images inside, and a
dataset card) and publish it in one commit, so a DPO run's pairs can be inspected and reused."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from datasets import Dataset
from datasets.table import embed_table_storage
from huggingface_hub import DatasetCard, DatasetCardData, HfApi, get_token

from vlsafe.hub import hub_error

logger = logging.getLogger(__name__)

DATA_FILE = "data/train-00000-of-00001.parquet"
CARD_BODY = """
# Safety preference pairs (vlsafe)

DPO pairs for vision-language safety tuning, built by `recipes/dpo_safety.py` from {source}.

- Harmful prompts: **chosen** = the reference refusal; **rejected** = the policy model's own answer when the
  keyword judge found that it complied (`rejected_source=on_policy`), else a fixed compliant answer
  (`synthetic`).
- Safe prompts: **chosen** = the reference answer; **rejected** = the policy's own refusal (`on_policy`),
  else a refusal template (`template`).

| kind | rejected_source | pairs |
|---|---|---|
{table}

Columns: `images`, `prompt`, `chosen`, `rejected` (TRL's conversational vision preference format) and the
provenance columns `source`, `id`, `kind`, `safe`, `category`, `subcategory`, `chosen_source`,
`rejected_source`. The prompts include harmful requests (and their images, if the source has harmful images):
use for safety research and training only.
"""


def save_preference_pairs(pairs: Dataset, folder: str | Path, *, source: str, license: str = "other") -> Path:
    """Write `pairs` to `folder` as a Hub dataset: `data/*.parquet` with images embedded, and README.md."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    # Embed the image bytes (the in-memory dataset only holds paths) so the parquet file stands alone.
    embedded = pairs.with_format("arrow").map(embed_table_storage, batched=True).with_format(None)
    embedded.to_parquet(folder / DATA_FILE)
    counts = Counter(zip(pairs["kind"], pairs["rejected_source"], strict=True))
    table = "\n".join(f"| {kind} | {rejected} | {n} |" for (kind, rejected), n in sorted(counts.items()))
    data = DatasetCardData(
        license=license,
        task_categories=["image-text-to-text"],
        tags=["vlsafe", "safety", "dpo", "preference"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n" + CARD_BODY.format(source=source, table=table))
    card.save(folder / "README.md")
    logger.info("Saved %d preference pairs to %s", len(pairs), folder)
    return folder


def push_preference_pairs(
    folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False
) -> str:
    """Publish a folder written by `save_preference_pairs` to the dataset repo `repo_id` in one commit."""
    api = HfApi(token=token or get_token())
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            allow_patterns=["README.md", "data/*.parquet"],
            commit_message="Upload safety preference pairs with vlsafe",
        )
    except Exception as error:
        raise hub_error(error, repo_id, "push the preference pairs to", write=True) from None
    logger.info("Pushed preference pairs to %s", info.commit_url)
    return info.oid
