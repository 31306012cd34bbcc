"""Speed settings the recipes choose for the machine, each one logged with its reason: training settings of
the SFT recipes (``auto_speed``, on by default) and the generation batch size of the evaluation.

The baseline measured on one H200 (LLaVA-1.5-7B shape, LoRA r128, batch 8, about 900 tokens per sample)
shows where TRL's defaults lose time: gradient checkpointing recomputes every layer's forward pass
(3.9 -> 7.9 samples/s when off), and images decoded and preprocessed in the training process stall the
GPU (7.9 -> 10.6 samples/s with 4 dataloader workers). Turning checkpointing off costs memory, so vlsafe
estimates the peak first and, when the configured batch does not fit, splits it into smaller micro-batches
with more accumulation steps (the same effective batch, hence the same loss curve) before falling back to
checkpointing. Liger's layer kernels (RMSNorm, SwiGLU, RoPE) are used when the `liger` extra is installed.

The estimate covers LoRA and full fine-tuning (gradients and Adam moments of every trained parameter), SFT and
DPO (chosen and rejected sequences in one batch; for full fine-tuning a frozen reference copy of the weights).
It is per device and does not model sharding (DeepSpeed ZeRO, FSDP), which only lowers the real peak.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import is_peft_model
from peft import LoraConfig
from transformers import PreTrainedModel, TrainingArguments

logger = logging.getLogger(__name__)

# Activation bytes kept for the backward pass, per token, per unit of hidden size, per layer, in 16-bit
# precision, without checkpointing. Fitted to the H200 baseline (peak 72.7 GB at batch 8 and 127.8 GB at
# batch 16: 6.9 GB per 900-token sample over 32 layers of width 4096 = 58 bytes), rounded up.
ACTIVATION_BYTES = 60
LORA_BYTES_PER_PARAM = 16  # fp32 weight, gradient and two Adam moments
# Full fine-tuning: gradient and two Adam moments per trained parameter, each in the parameter's dtype
# (torch's AdamW keeps its moments like the parameter); the weight itself is counted with the weights.
FULL_STATES_PER_PARAM = 3
MEMORY_HEADROOM = 0.9  # of the device's memory: allocator fragmentation, CUDA context, the vision tower
MAX_WORKERS = 4


@dataclass(frozen=True)
class SpeedChoice:
    """One training argument vlsafe sets, and why."""

    setting: str
    value: Any
    reason: str


def estimated_peak_bytes(
    model: PreTrainedModel,
    lora: LoraConfig | None,
    *,
    batch_size: int,
    tokens: int,
    checkpointing: bool,
    pairs: bool = False,
) -> int:
    """Peak training memory: weights, the trained parameters' gradients and optimizer state, and the
    activations of one micro-batch of `batch_size` samples of `tokens` tokens (only each layer's input with
    checkpointing).

    `lora` is the adapter still to be added; None means `model` trains as it is: the parameters that take
    gradients (full fine-tuning, or an adapter already on it). With `pairs` (DPO) a sample is a chosen and a
    rejected sequence, and full fine-tuning keeps a frozen reference copy of the weights; with LoRA the
    reference is the same weights with the adapter off (or TRL's frozen copy of a continued adapter).
    """
    text = model.config.get_text_config()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    width = 2 if model.dtype in (torch.bfloat16, torch.float16) else 4
    per_layer_token = (ACTIVATION_BYTES if not checkpointing else 2) * text.hidden_size * width // 2
    sequences = batch_size * (2 if pairs else 1)
    activations = per_layer_token * text.num_hidden_layers * sequences * tokens
    return (
        weights
        + trained_state_bytes(model, lora)
        + activations
        + (reference_bytes(model, lora) if pairs else 0)
    )


def trained_state_bytes(model: PreTrainedModel, lora: LoraConfig | None) -> int:
    """What training adds for the trained parameters: for an adapter still to be added its fp32 weights,
    gradients and Adam moments; else gradients and Adam moments of each parameter that takes gradients."""
    if lora is not None:
        lora_params = sum(
            lora.r * (module.in_features + module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and _is_lora_target(lora, name)
        )
        return lora_params * LORA_BYTES_PER_PARAM
    trained = (p for p in model.parameters() if p.requires_grad)
    return sum(p.numel() * p.element_size() * FULL_STATES_PER_PARAM for p in trained)


def reference_bytes(model: PreTrainedModel, lora: LoraConfig | None) -> int:
    """Weights DPO's reference model adds: none for a new adapter (the reference is the adapter switched off),
    a frozen copy of a continued adapter, or a full frozen copy of the weights for full fine-tuning."""
    if lora is not None:
        return 0
    if is_peft_model(model):
        return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def choose_speed_settings(
    args: TrainingArguments,
    model: PreTrainedModel,
    lora: LoraConfig | None,
    *,
    longest_sample: int,
    device_memory: int | None,
    cpus_per_process: int,
    liger_available: bool,
    pairs: bool = False,
) -> list[SpeedChoice]:
    """The settings to apply for a run on a device with `device_memory` bytes (None: unknown, e.g. CPU);
    `lora` and `pairs` as in `estimated_peak_bytes`."""
    choices = _memory_choices(args, model, lora, longest_sample, device_memory, pairs)
    on_gpu = device_memory is not None and not args.use_cpu
    if on_gpu and args.dataloader_num_workers == 0:
        workers = min(MAX_WORKERS, cpus_per_process - 1)
        if workers > 0:
            choices += [
                SpeedChoice(
                    "dataloader_num_workers",
                    workers,
                    "images are decoded and preprocessed in worker processes, off the training step",
                ),
                SpeedChoice(
                    "dataloader_persistent_workers", True, "workers are started once, not every epoch"
                ),
            ]
    if on_gpu and liger_available and not args.use_liger_kernel:
        choices.append(
            SpeedChoice("use_liger_kernel", True, "Liger's fused layer kernels (the `liger` extra)")
        )
    return choices


def _memory_choices(
    args: TrainingArguments,
    model: PreTrainedModel,
    lora: LoraConfig | None,
    longest_sample: int,
    device_memory: int | None,
    pairs: bool,
) -> list[SpeedChoice]:
    """Checkpointing off at the largest micro-batch (a divisor of the configured one) that fits in memory."""
    if device_memory is None:
        return [SpeedChoice("gradient_checkpointing", False, "no device memory limit known (CPU)")]
    budget = int(device_memory * MEMORY_HEADROOM)
    batch, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    micro = batch
    while micro >= 1:
        peak = estimated_peak_bytes(
            model, lora, batch_size=micro, tokens=longest_sample, checkpointing=False, pairs=pairs
        )
        if peak <= budget:
            fits = f"estimated peak {peak / 2**30:.1f} GiB of {budget / 2**30:.1f} GiB usable"
            choices = [SpeedChoice("gradient_checkpointing", False, f"no recomputation; {fits}")]
            if micro < batch:
                steps = accumulation * batch // micro
                why = f"the same effective batch ({batch * accumulation}) in micro-batches that fit"
                choices += [
                    SpeedChoice("per_device_train_batch_size", micro, why),
                    SpeedChoice("gradient_accumulation_steps", steps, why),
                ]
            return choices
        if micro % 2:
            break
        micro //= 2
    reason = (
        f"even one sample of {longest_sample} tokens would not fit in {budget / 2**30:.1f} GiB without it"
    )
    least = estimated_peak_bytes(
        model, lora, batch_size=1, tokens=longest_sample, checkpointing=True, pairs=pairs
    )
    if least > budget:
        reason += (
            f"; even with it the estimated peak is {least / 2**30:.1f} GiB: expect to run out of memory unless "
            "DeepSpeed ZeRO or FSDP shards the model (recipes/accelerate/), or use LoRA, a 4-bit base, or "
            "shorter samples"
        )
        logger.warning("auto_speed: %s", reason)
    return [SpeedChoice("gradient_checkpointing", True, reason)]


def apply_speed_settings(args: TrainingArguments, choices: list[SpeedChoice]) -> None:
    """Set the chosen values on `args`, logging each with its reason."""
    for choice in choices:
        before = getattr(args, choice.setting)
        setattr(args, choice.setting, choice.value)
        if choice.setting == "gradient_checkpointing":  # transformers 5 reads the new name, TRL the old one
            args.activation_checkpointing = choice.value
        changed = "" if before == choice.value else f" (was {before})"
        logger.info("auto_speed: %s = %s%s: %s", choice.setting, choice.value, changed, choice.reason)
    if choices:
        logger.info("auto_speed: pass --auto_speed false to train with the configured values as they are")


def choose_and_apply(
    args: TrainingArguments,
    model: PreTrainedModel,
    lora: LoraConfig | None,
    longest_sample: int,
    *,
    pairs: bool = False,
) -> list[SpeedChoice]:
    """Choose the settings for this machine (the process's GPU, its share of the CPUs) and apply them;
    `lora` and `pairs` as in `estimated_peak_bytes`."""
    device_memory = None
    if torch.cuda.is_available() and not args.use_cpu:
        device_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    choices = choose_speed_settings(
        args,
        model,
        lora,
        longest_sample=longest_sample,
        device_memory=device_memory,
        cpus_per_process=max(1, len(os.sched_getaffinity(0)) // processes),
        liger_available=importlib.util.find_spec("liger_kernel") is not None,
        pairs=pairs,
    )
    apply_speed_settings(args, choices)
    return choices


def _is_lora_target(lora: LoraConfig, name: str) -> bool:
    targets = lora.target_modules
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith(f".{target}") for target in targets or ())


# Generation: the KV cache grows with batch x tokens; half the free memory leaves room for prefill activations.
CPU_GENERATION_BATCH = 16
MAX_GENERATION_BATCH = 128
KV_CACHE_SHARE = 0.5


def kv_cache_bytes(model: PreTrainedModel, tokens: int) -> int:
    """Key/value cache of one sequence of `tokens` tokens (keys and values, every layer, the model's dtype)."""
    text = model.config.get_text_config()
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    width = torch.finfo(model.dtype).bits // 8
    return 2 * text.num_hidden_layers * heads * head_dim * tokens * width


def generation_batch_size(model: PreTrainedModel, tokens: int, free_memory: int | None) -> tuple[int, str]:
    """The batch size for greedy generation of sequences up to `tokens` long, and why: on a GPU the largest
    power of two (at most 128) whose KV cache fits in half of `free_memory`; 16 on a CPU (None)."""
    if free_memory is None:
        return CPU_GENERATION_BATCH, "the CPU default"
    per_sequence = kv_cache_bytes(model, tokens)
    fits = int(free_memory * KV_CACHE_SHARE // per_sequence)
    batch = 1 << max(0, min(fits, MAX_GENERATION_BATCH).bit_length() - 1)
    return batch, (
        f"KV cache {per_sequence / 2**20:.0f} MiB per sequence of {tokens} tokens, "
        f"{free_memory / 2**30:.1f} GiB free"
    )
