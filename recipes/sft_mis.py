"""MIS multi-image safety fine-tuning (Ding et al., 2025): LoRA SFT on MIS_Train's chain-of-thought answers
(describe both images, reason about the pair, answer safely) mixed with general multi-image QA.

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml \
        recipes/sft_mis.py --config recipes/configs/qwen2.5-vl-7b/sft_mis.yaml

Any config value can be overridden on the command line (`--general_ratio 0.2`); `--use_peft false` fully
fine-tunes the language model, as the paper's released models are (vision tower and projector frozen). Samples
longer than `max_length` tokens (images included) are left out before training, with a count in the log,
rather than truncated. The output folder holds the LoRA adapter (or the full weights), processor, tokenizer and
chat template, training_summary.json and the model card, and loads with
`AutoModelForImageTextToText.from_pretrained`.
With `--push_to_hub --hub_model_id <user>/<name>` the finished folder is published in one commit at the end.
`--safety_curve true` logs ASR and over-refusal on held-out prompts while training (vlsafe.safety_curve; safe
prompts come from the general data). The same script runs as `vlsafe sft-mis --config <model>` (vlsafe.cli).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import SFTConfig, TrlParser

from vlsafe.data.mis import MIS_TRAIN_REPO, load_mis_train
from vlsafe.data.mixture import mix_with_helpfulness
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.errors import DataError
from vlsafe.safety_curve import SafetyCurveArguments, add_safety_curve, curve_prompts
from vlsafe.training import (
    DatasetRef,
    ImageDataArguments,
    ModelArguments,
    RunRecord,
    build_sft_trainer,
    take_over_hub_push,
    train_and_save,
)


@dataclass
class MISArguments(SafetyCurveArguments, ImageDataArguments):
    """Where the data comes from and how it is mixed."""

    dataset: str = field(
        default=MIS_TRAIN_REPO, metadata={"help": "MIS_Train Hub dataset id or local folder."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Hub revision of MIS_Train."})
    general_dataset: str | None = field(
        default=None,
        metadata={
            "help": "General multi-image QA: LLaVA/ShareGPT json file, folder or Hub id; None: no mixing."
        },
    )
    general_dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub revision of the general dataset."}
    )
    general_data_file: str | None = field(
        default=None, metadata={"help": "json name in a folder or Hub repo."}
    )
    general_image_root: str | None = field(
        default=None, metadata={"help": "Folder the general image paths are relative to."}
    )
    general_image_archive: str | None = field(
        default=None, metadata={"help": "Zip of general images in the folder/repo."}
    )
    general_ratio: float = field(
        default=0.11,
        metadata={"help": "Share of general samples in the mix (MIS paper: ~500 of ~4,400, 0.11)."},
    )
    license: str = field(
        default="other",
        metadata={"help": "License in the adapter's card: the base model's (e.g. apache-2.0)."},
    )


def general_samples(safety_samples: int, ratio: float) -> int:
    """How many general samples make them `ratio` of a mix with `safety_samples` safety samples."""
    if not 0 <= ratio < 1:
        raise DataError(f"general_ratio must be in [0, 1), got {ratio}: it is the general share of the mix.")
    return round(safety_samples * ratio / (1 - ratio))


def main(data_args: MISArguments, training_args: SFTConfig, model_args: ModelArguments) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    safety = load_mis_train(
        data_args.dataset,
        revision=data_args.dataset_revision,
        skip_missing_images=data_args.skip_missing_images,
    )
    general, n_general = None, 0
    if data_args.general_dataset:
        general = load_sharegpt(
            data_args.general_dataset,
            data_file=data_args.general_data_file,
            image_root=data_args.general_image_root,
            image_archive=data_args.general_image_archive,
            revision=data_args.general_dataset_revision,
            skip_missing_images=data_args.skip_missing_images,
            name="general",
        )
        n_general = general_samples(len(safety), data_args.general_ratio)
    train_dataset = mix_with_helpfulness(safety, general, n_general, seed=training_args.seed)
    train_dataset, curve = curve_prompts(train_dataset, data_args, seed=training_args.seed)

    hub_target = take_over_hub_push(training_args)  # vlsafe publishes the finished folder, in one commit
    trainer = build_sft_trainer(train_dataset, training_args, model_args, data_args)
    add_safety_curve(trainer, curve, data_args)
    train_and_save(trainer, run_record(data_args, model_args, n_general), hub_target)


def run_record(data_args: MISArguments, model_args: ModelArguments, n_general: int) -> RunRecord:
    """The run as the card tells it: recipe, base model and datasets as the user named them."""
    datasets = [DatasetRef("safety", data_args.dataset, data_args.dataset_revision, split="train")]
    if data_args.general_dataset:
        datasets.append(
            DatasetRef(
                "helpfulness",
                data_args.general_dataset,
                data_args.general_dataset_revision,
                samples=n_general,
            )
        )
    return RunRecord(
        recipe="sft_mis",
        base_model=model_args.model_name_or_path,
        base_revision=model_args.model_revision,
        datasets=datasets,
        license=data_args.license,
    )


def make_parser(prog: str | None = None, **kwargs) -> TrlParser:
    """The recipe's arguments (script, SFTConfig, model); `vlsafe sft-mis` parses with it too."""
    return TrlParser((MISArguments, SFTConfig, ModelArguments), prog=prog, **kwargs)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
