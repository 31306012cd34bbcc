"""VLGuard post-hoc safety fine-tuning: LoRA SFT on VLGuard train + ordinary instruction data.

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml \
        recipes/sft_vlguard.py --config recipes/configs/llava-1.5-7b/sft_vlguard.yaml

Any config value can be overridden on the command line (`--learning_rate 1e-4`). The output folder holds
the LoRA adapter, processor, tokenizer and chat template, and loads with
`AutoModelForImageTextToText.from_pretrained(output_dir)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import ModelConfig, SFTConfig, TrlParser

from vlsafe.data.mixture import mix_with_helpfulness
from vlsafe.data.sharegpt import load_sharegpt
from vlsafe.data.vlguard import VLGUARD_REPO, load_vlguard
from vlsafe.training import build_sft_trainer, train_and_save


@dataclass
class VLGuardArguments:
    """Where the data comes from and how it is mixed."""

    dataset: str = field(default=VLGUARD_REPO, metadata={"help": "VLGuard Hub dataset id or local folder."})
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Hub revision of the VLGuard dataset."}
    )
    helpful_dataset: str | None = field(
        default=None,
        metadata={"help": "LLaVA/ShareGPT json file, local folder or Hub dataset id; None: no mixing."},
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
    skip_missing_images: bool = field(
        default=False,
        metadata={
            "help": "Leave out samples whose image is missing (counted in the log) instead of failing."
        },
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Image resolution cap (Qwen-VL processors)."}
    )


def main(data_args: VLGuardArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    safety = load_vlguard(
        data_args.dataset,
        "train",
        revision=data_args.dataset_revision,
        skip_missing_images=data_args.skip_missing_images,
    )
    helpful = None
    if data_args.helpful_dataset:
        helpful = load_sharegpt(
            data_args.helpful_dataset,
            data_file=data_args.helpful_data_file,
            image_root=data_args.helpful_image_root,
            image_archive=data_args.helpful_image_archive,
            skip_missing_images=data_args.skip_missing_images,
        )
    train_dataset = mix_with_helpfulness(safety, helpful, data_args.helpful_samples, seed=training_args.seed)

    trainer = build_sft_trainer(train_dataset, training_args, model_args, max_pixels=data_args.max_pixels)
    train_and_save(trainer)


if __name__ == "__main__":
    parser = TrlParser((VLGuardArguments, SFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
