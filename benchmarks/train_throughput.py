"""Training throughput: vlsafe's SFT recipe settings vs plain TRL defaults, same model, data, LoRA and GPU.

    python benchmarks/train_throughput.py                          # CPU mode: tiny LLaVA fixture
    python benchmarks/train_throughput.py --shape llava-1.5-7b     # GPU mode: random-weight 7B shape
        [--batch_size 8] [--steps 20] [--warmup 3] [--rounds 2] [--lora_r 128] [--peak_tflops 790]

Both sides train LoRA (same rank, targets and seed) with SFTTrainer on the same VLGuard-shaped samples (the
real train.json's texts when the project's shared folder is present; 400-1000 px images) with assistant-only
loss:

- `trl`: `SFTTrainer` with `SFTConfig` defaults (gradient checkpointing on, no dataloader workers);
- `vlsafe`: `vlsafe.training.assemble_sft_trainer`, the code path of `recipes/sft_vlguard.py` after loading,
  with `auto_speed` (its default) choosing the settings; its log lines say what it chose.

Each side runs in a fresh process (Liger patches model classes process-wide), alternating `trl, vlsafe` for
`--rounds` rounds; the figures are the medians over rounds of the steps after warm-up. Prints samples/s,
tokens/s, peak memory, estimated model FLOP utilisation (with --peak_tflops), the speed-up and the largest
difference between the two loss curves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from shapes import FAMILY, SHAPES, build_model, build_processor, write_vlguard_train
from transformers import TrainerCallback

SIDES = ("trl", "vlsafe")


def train_once(args: argparse.Namespace, side: str) -> dict:
    """One side's run in this process: step times, losses and peak memory."""
    from trl import SFTConfig, SFTTrainer

    from vlsafe.data.length import token_lengths
    from vlsafe.data.vlguard import load_vlguard
    from vlsafe.modeling import family_of, lora_config, prepare_training_template
    from vlsafe.training import assemble_sft_trainer

    on_gpu = torch.cuda.is_available()
    processor = build_processor(args.shape, args.scratch)
    model = build_model(args.shape, processor, args.scratch, torch.bfloat16 if on_gpu else torch.float32)
    family = family_of(model.config.model_type)
    lora = lora_config(family, r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0)
    steps = args.warmup + args.steps
    dataset = load_vlguard(args.scratch / "vlguard", "train").shuffle(seed=0)
    dataset = dataset.select(range(min(len(dataset), steps * args.batch_size)))
    config = SFTConfig(
        output_dir=str(args.scratch / f"run-{side}"),
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=on_gpu,
        use_cpu=not on_gpu,
        assistant_only_loss=True,  # the same objective on both sides, so the loss curves compare
        max_length=None,
        seed=0,
    )
    if side == "trl":
        prepare_training_template(processor, family)  # TRL's defaults otherwise: the template masks prompts
        trainer = SFTTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=processor, peft_config=lora
        )
    else:
        trainer = assemble_sft_trainer(model, processor, lora, dataset, config)
    clock = StepClock()
    trainer.add_callback(clock)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = clock.times[args.warmup :]
    seconds = measured[-1] - clock.times[args.warmup - 1] if args.warmup else measured[-1] - clock.start
    samples_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps
    tokens = statistics.mean(token_lengths(dataset, processor))
    peak = (
        torch.cuda.max_memory_allocated()
        if on_gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "samples_per_s": len(measured) * samples_per_step / seconds,
        "tokens_per_sample": tokens,
        "peak_gb": peak / 1e9,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({os.cpu_count()} cores)",
    }


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step (after the GPU finished it)."""

    def __init__(self):
        self.start, self.times = time.perf_counter(), []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lora_r", type=int, default=128)
    parser.add_argument("--peak_tflops", type=float, help="the device's bf16 matmul rate, for utilisation")
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args()
    args.scratch = args.scratch or Path(tempfile.mkdtemp(prefix="vlsafe-train-bench-"))
    if args.side:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("vlsafe").setLevel(logging.INFO)  # the parent shows auto_speed's choices
        print("RESULT " + json.dumps(train_once(args, args.side)))
        return

    images = (args.warmup + args.steps) * args.batch_size  # VLGuard has ~1.5 samples per image: enough
    write_vlguard_train(args.scratch / "vlguard", images)
    env = os.environ | {"VLSAFE_CACHE": str(args.scratch / "cache")}
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            child = [sys.executable, __file__, *sys.argv[1:], "--scratch", str(args.scratch), "--side", side]
            result = subprocess.run(child, env=env, capture_output=True, text=True, check=False)
            if result.returncode:
                sys.exit(f"the {side} run failed:\n{result.stderr[-5000:]}")
            line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("RESULT "))
            runs[side].append(json.loads(line.removeprefix("RESULT ")))
            if side == "vlsafe" and len(runs[side]) == 1:
                print("\n".join(x for x in result.stderr.splitlines() if "auto_speed" in x))
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    first = runs["trl"][0]
    print(
        f"\n{args.shape} ({FAMILY[args.shape]}, {first['params'] / 1e9:.2f}B params) on {first['device']}; "
        f"LoRA r{args.lora_r}, batch {args.batch_size}, {first['tokens_per_sample']:.0f} tokens/sample, "
        f"{args.steps} steps after {args.warmup} warm-up, median of {args.rounds} rounds"
    )
    print("| configuration | samples/s | tokens/s | peak GB | est. MFU |")
    print("|---|---|---|---|---|")
    speed = {}
    for side in SIDES:
        samples = statistics.median(run["samples_per_s"] for run in runs[side])
        tokens = samples * first["tokens_per_sample"]
        peak = max(run["peak_gb"] for run in runs[side])
        # LoRA on a frozen model: forward + backward through the activations ~ 4 FLOPs per parameter per token.
        mfu = f"{4 * first['params'] * tokens / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops else "-"
        name = "TRL defaults" if side == "trl" else "vlsafe recipe (auto_speed)"
        print(f"| {name} | {samples:.2f} | {tokens:.0f} | {peak:.1f} | {mfu} |")
        speed[side] = samples
    print(f"speed-up vlsafe / TRL: {speed['vlsafe'] / speed['trl']:.2f}x")
    trl_loss, vlsafe_loss = runs["trl"][0]["losses"], runs["vlsafe"][0]["losses"]
    gap = max(abs(a - b) / abs(a) for a, b in zip(trl_loss, vlsafe_loss, strict=True))
    print(f"loss curves ({len(trl_loss)} steps): largest relative difference {gap:.2%}")


if __name__ == "__main__":
    main()
