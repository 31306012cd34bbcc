"""VLGuard post-hoc safety fine-tuning: LoRA SFT on VLGuard train + ordinary instruction data.

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml \
        recipes/sft_vlguard.py --config recipes/configs/llava-1.5-7b/sft_vlguard.yaml

Any config value can be overridden on the command line (`--learning_rate 1e-4`); `--use_peft false` fully
fine-tunes the language model instead (vision tower and projector frozen unless `--train_vision_tower` /
`--train_projector`). The output folder holds the LoRA adapter (or the full weights), processor, tokenizer and
chat template, training_summary.json and the model card (README.md), and loads with
`AutoModelForImageTextToText.from_pretrained(output_dir)`. With
`--push_to_hub --hub_model_id <user>/<name>` the finished folder is published in one commit at the end.
`--safety_curve true` logs ASR and over-refusal on held-out prompts while training (vlsafe.safety_curve).
The same script runs as `vlsafe sft-vlguard --config <model>` (vlsafe.cli).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import SFTConfig, TrlParser

from vlsafe.data.mixture import mix_with_helpfulness
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import VLGUARD_REPO, load_vlguard
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
class VLGuardArguments(SafetyCurveArguments, ImageDataArguments):
    """Where the data comes from and how it is mixed."""

    dataset: str = field(default=VLGUARD_REPO, metadata={"help": "VLGuard Hub dataset id or local folder."})
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub revision of the VLGuard dataset."}
    )
    helpful_dataset: str | None = field(
        default=None,
        metadata={"help": "LLaVA/ShareGPT json file, local folder or Hub dataset id; None: no mixing."},
    )
    helpful_dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub revision of the helpfulness dataset."}
    )
    helpful_data_file: str | None = field(
        default=None, metadata={"help": "json name in a folder or Hub repo."}
    )
    helpful_image_root: str | None = field(
        default=None, metadata={"help": "Folder the helpful image paths are relative to."}
    )
    helpful_image_archive: str | None = field(
        default=None, metadata={"help": "Zip of helpful images in the folder/repo."}
    )
    helpful_samples: int | None = field(
        default=5000,
        metadata={"help": "Helpfulness samples drawn at random (VLGuard paper: 5000); None: all."},
    )
    license: str = field(
        default="other",
        metadata={"help": "License in the adapter's card: the base model's (e.g. apache-2.0, llama2)."},
    )


def main(data_args: VLGuardArguments, training_args: SFTConfig, model_args: ModelArguments) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    safety = load_vlguard(
        data_args.dataset,
        "train",
        revision=data_args.dataset_revision,
        skip_missing_images=data_args.skip_missing_images,
    )
    helpful = None
    if data_args.helpful_dataset and data_args.helpful_samples != 0:
        helpful = load_sharegpt(
            data_args.helpful_dataset,
            data_file=data_args.helpful_data_file,
            image_root=data_args.helpful_image_root,
            image_archive=data_args.helpful_image_archive,
            revision=data_args.helpful_dataset_revision,
            skip_missing_images=data_args.skip_missing_images,
            samples=data_args.helpful_samples,  # drawn before images are checked: LLaVA's json has 665k
            seed=training_args.seed,
        )
    train_dataset = mix_with_helpfulness(safety, helpful, None, seed=training_args.seed)
    train_dataset, curve = curve_prompts(train_dataset, data_args, seed=training_args.seed)

    hub_target = take_over_hub_push(training_args)  # vlsafe publishes the finished folder, in one commit
    trainer = build_sft_trainer(train_dataset, training_args, model_args, data_args)
    add_safety_curve(trainer, curve, data_args)
    train_and_save(trainer, run_record(data_args, model_args), hub_target)


def run_record(data_args: VLGuardArguments, model_args: ModelArguments) -> RunRecord:
    """The run as the card tells it: recipe, base model and datasets as the user named them."""
    datasets = [DatasetRef("safety", data_args.dataset, data_args.dataset_revision, split="train")]
    if data_args.helpful_dataset and data_args.helpful_samples != 0:
        datasets.append(
            DatasetRef(
                "helpfulness",
                data_args.helpful_dataset,
                data_args.helpful_dataset_revision,
                samples=data_args.helpful_samples,
            )
        )
    return RunRecord(
        recipe="sft_vlguard",
        base_model=model_args.model_name_or_path,
        base_revision=model_args.model_revision,
        datasets=datasets,
        license=data_args.license,
    )


def make_parser(prog: str | None = None, **kwargs) -> TrlParser:
    """The recipe's arguments (script, SFTConfig, model); `vlsafe sft-vlguard` parses with it too."""
    return TrlParser((VLGuardArguments, SFTConfig, ModelArguments), prog=prog, **kwargs)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
