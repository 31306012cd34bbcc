"""Training throughput: vlsafe's SFT recipe settings vs plain TRL defaults, same model, data, LoRA and GPU.

    python benchmarks/train_throughput.py [--rounds 5] [--lora_r 16]   # CPU mode: tiny LLaVA fixture
    python benchmarks/train_throughput.py --shape llava-1.5-7b         # GPU mode: random-weight 7B shape
        [--batch_size 8] [--steps 20] [--warmup 3] [--rounds 3] [--lora_r 128] [--peak_tflops 790]
        [--threads N] [--json report.json] [--time_budget SECONDS]

Both sides train LoRA (same rank, targets and seed) with SFTTrainer on the same VLGuard-shaped samples (the
real train.json's texts when the project's shared folder is present; 400-1000 px images) with assistant-only
loss:

- `trl`: `SFTTrainer` with `SFTConfig` defaults (gradient checkpointing on, no dataloader workers);
- `vlsafe`: `vlsafe.training.assemble_sft_trainer`, the code path of `recipes/sft_vlguard.py` after loading,
  with `auto_speed` (its default) choosing the settings; its log lines say what it chose.

Each side runs in a fresh process (Liger patches model classes process-wide), alternating `trl, vlsafe` for
`--rounds` rounds, with the same thread count; each is timed over --steps steps after --warmup untimed
ones. Reports per round and as median (min-max): samples/s, tokens/s, peak memory, estimated model FLOP
utilisation (with --peak_tflops); the speed-up as the median of the per-round ratios; and, every round, the
largest relative difference between the two sides' loss curves (the settings change no arithmetic).
"""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import rounds
import torch
from shapes import FAMILY, SHAPES, build_model, build_processor, tiny_checkpoint, write_vlguard_train
from transformers import TrainerCallback

METHODS = {"trl": "TRL defaults", "vlsafe": "vlsafe recipe, auto_speed"}
# Largest relative loss difference that still counts as the same curve: in fp32 on a CPU the curves agree to
# 0.00%; in bf16 on a GPU, Liger's fused kernels round differently from the eager ones.
LOSS_TOLERANCE = 0.005


def train_once(args: argparse.Namespace, side: str) -> dict:
    """One side's run in this (fresh) process: throughput after warm-up, losses, peak memory, and for
    vlsafe the settings auto_speed chose (its log lines)."""
    from trl import SFTConfig, SFTTrainer

    from vlsafe.data.length import token_lengths
    from vlsafe.data.vlguard import load_vlguard
    from vlsafe.modeling import family_of, lora_config, prepare_training_template
    from vlsafe.training import assemble_sft_trainer

    choices = AutoSpeedLog()
    logging.getLogger("vlsafe").addHandler(choices)
    logging.getLogger("vlsafe").setLevel(logging.INFO)
    torch.manual_seed(0)  # the 7B shapes are built with random weights: the same ones on both sides
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
    samples_per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    tokens = statistics.mean(token_lengths(dataset, processor))
    peak = (
        torch.cuda.max_memory_allocated()
        if on_gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    samples_per_s = len(measured) * samples_per_step / seconds
    params = sum(p.numel() for p in trainer.model.parameters())
    result = {
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * tokens,
        "tokens_per_sample": tokens,
        "peak_gb": peak / 1e9,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "params": params,
        "auto_speed": choices.messages,
    }
    if args.peak_tflops:  # LoRA on a frozen model: forward + backward ~ 4 FLOPs per parameter per token
        result["mfu"] = 100 * 4 * params * samples_per_s * tokens / (args.peak_tflops * 1e12)
    return result


class AutoSpeedLog(logging.Handler):
    """Keeps the `auto_speed: ...` lines vlsafe logs, for the report."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("auto_speed"):
            self.messages.append(record.getMessage())


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
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--lora_r", type=int, default=128)
    parser.add_argument("--peak_tflops", type=float, help="the device's bf16 matmul rate, for utilisation")
    parser.add_argument("--scratch", type=Path, help="work folder (default: a new temporary one)")
    rounds.add_arguments(parser, list(METHODS))
    args = parser.parse_args()
    rounds.check_arguments(parser, args)
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: give at least 1 timed step")
    if args.child:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        rounds.run_child(args, train_once)
        return

    args.scratch = args.scratch or Path(tempfile.mkdtemp(prefix="vlsafe-train-bench-"))
    images = (args.warmup + args.steps) * args.batch_size  # VLGuard has ~1.5 samples per image: enough
    write_vlguard_train(args.scratch / "vlguard", images)
    tiny_checkpoint(FAMILY[args.shape], args.scratch)  # built once, loaded by every child
    cache = {"VLSAFE_CACHE": str(args.scratch / "cache")}
    results = rounds.alternate(__file__, list(METHODS), args, _child_options(args), env=lambda *_: cache)
    checks = [loss_check(results)]
    first = results[0]["trl"]
    chosen = results[0]["vlsafe"]["auto_speed"]
    for result in results:  # compared above; the report keeps the figures
        for method in METHODS:
            result[method].pop("losses")
            result[method].pop("auto_speed")
    report = rounds.build_report(
        title="Training throughput",
        script=__file__,
        argv=sys.argv[1:],
        args=args,
        methods=METHODS,
        rounds=results,
        figures=[
            rounds.Figure("samples_per_s", "samples/s", 2),
            rounds.Figure("tokens_per_s", "tokens/s", 0),
            rounds.Figure("peak_gb", "peak GB", 1),
            rounds.Figure("mfu", "est. MFU %", 1),
        ],
        ratios=[rounds.Ratio("speed-up vlsafe / TRL", ("vlsafe", "samples_per_s"), ("trl", "samples_per_s"))],
        checks=checks,
        settings={
            "shape": f"{args.shape} ({FAMILY[args.shape]}, {_count(first['params'])} parameters)",
            "LoRA": f"r{args.lora_r}",
            "batch": args.batch_size,
            "tokens/sample": f"{first['tokens_per_sample']:.0f}",
            "timed steps": f"{args.steps} after {args.warmup} warm-up",
        }
        | ({"peak TFLOPS for MFU": args.peak_tflops} if args.peak_tflops else {}),
        notes=[f"vlsafe's choices (its log): {'; '.join(chosen) or 'none logged'}."],
    )
    rounds.publish(report, args.json)


def loss_check(results: list[dict[str, dict]]) -> rounds.Check:
    """Per round: the largest relative difference between the two sides' loss curves."""
    values, passed = [], True
    for result in results:
        trl_loss, vlsafe_loss = result["trl"]["losses"], result["vlsafe"]["losses"]
        gap = max(abs(a - b) / abs(a) for a, b in zip(trl_loss, vlsafe_loss, strict=True))
        values.append(f"{gap:.2%} over {len(trl_loss)} steps")
        passed &= gap <= LOSS_TOLERANCE
    return rounds.Check(
        f"loss curves agree (largest relative difference, at most {LOSS_TOLERANCE:.1%})", values, passed
    )


def _count(number: int) -> str:
    return f"{number / 1e9:.2f}B" if number >= 1e8 else f"{number / 1e6:.2f}M"


def _child_options(args: argparse.Namespace) -> list[str]:
    """This script's measurement options, resolved, for the child processes."""
    argv = ["--shape", args.shape, "--batch_size", str(args.batch_size), "--steps", str(args.steps)]
    argv += ["--warmup", str(args.warmup), "--lora_r", str(args.lora_r), "--scratch", str(args.scratch)]
    return argv + (["--peak_tflops", str(args.peak_tflops)] if args.peak_tflops else [])


if __name__ == "__main__":
    main()
