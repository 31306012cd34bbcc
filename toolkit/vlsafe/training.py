"""Assemble TRL trainers for vlsafe recipes: model + processor + LoRA on the language model + template."""

from __future__ import annotations

import logging

from datasets import Dataset
from trl import ModelConfig, SFTConfig, SFTTrainer

from vlsafe.modeling import family_of, load_model, load_processor, lora_config, prepare_training_template

logger = logging.getLogger(__name__)


def build_sft_trainer(
    train_dataset: Dataset,
    training_args: SFTConfig,
    model_args: ModelConfig,
    *,
    max_pixels: int | None = None,
) -> SFTTrainer:
    """An SFTTrainer with LoRA on the language model only and, with assistant-only loss, a template that
    masks images and prompts out of the loss."""
    model = load_model(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        load_in_4bit=model_args.load_in_4bit,
        trust_remote_code=training_args.trust_remote_code,
    )
    processor = load_processor(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        max_pixels=max_pixels,
        trust_remote_code=training_args.trust_remote_code,
    )
    family = family_of(model.config.model_type)
    if training_args.assistant_only_loss:
        prepare_training_template(processor, family)
    peft_config = lora_config(
        family,
        r=model_args.lora_r,
        alpha=model_args.lora_alpha,
        dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )
    return SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        peft_config=peft_config,
    )


def train_and_save(trainer: SFTTrainer) -> None:
    """Train (resuming when asked) and save adapter + processor, so the output folder loads on its own."""
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    trainer.save_model(trainer.args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(trainer.args.output_dir)
        logger.info("Saved adapter and processor to %s", trainer.args.output_dir)
