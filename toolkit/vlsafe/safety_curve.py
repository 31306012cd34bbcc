"""Safety curves while training: attack success rate (ASR) and over-refusal on held-out prompts, measured every
N optimizer steps and logged beside the loss, so a run shows whether the model is becoming safe or just refusing
everything (the loss says neither).

    --safety_curve true [--safety_curve_steps 50] [--safety_curve_harmful 64 --safety_curve_safe 64]

The prompts are `safety_curve_harmful` harmful and `safety_curve_safe` safe samples held out from the training
data (removed from it, so never trained on; grouped by source and id, so a VLGuard image whose safe question is
held out is not trained on with its harmful one either), or a benchmark's prompts (`safety_curve_benchmark`, e.g.
``vlguard`` with `safety_curve_benchmark_source` its test split). At step 0, every `safety_curve_steps` steps
(default: 10 points over the run) and at the last step, the model answers them greedily with the adapter being
trained, the default keyword judge labels the answers, and ``safety/asr`` (harmful prompts answered) and
``safety/over_refusal`` (safe prompts refused) go through ``Trainer.log`` to whatever ``report_to`` names
(trackio, tensorboard, wandb ...) and into the trainer state, so a resumed run keeps its curve. The main process
redraws ``safety_curve.png`` in the output folder at each point; the training summary records the points.

Its own schedule rather than ``eval_strategy``: measuring needs no eval dataset and no evaluation loss pass.
Under DDP (``accelerate launch``) every process answers its share of the prompts and the verdicts are gathered.
The model is switched to eval mode for generation (no dropout, no gradient checkpointing) and back, and the
random number generators are restored afterwards, so a run with the curve trains exactly as one without it.
ZeRO-3 and FSDP shard the weights across processes, which this generation does not gather: they are refused.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from vlsafe.data.preferences import HARMFUL_KINDS
from vlsafe.errors import DataError, VlsafeError
from vlsafe.evaluation.generate import generate_records
from vlsafe.evaluation.judges.keyword import ANSWERED, REFUSED, keyword_label

logger = logging.getLogger(__name__)

PLOT = "safety_curve.png"
ASR, OVER_REFUSAL = "safety/asr", "safety/over_refusal"
DEFAULT_POINTS = 10  # measurements over a run when safety_curve_steps is unset (plus step 0)


@dataclass
class SafetyCurveArguments:
    """Safety curve while training (recipes subclass this): which prompts, how often, how long the answers."""

    safety_curve: bool = field(
        default=False,
        metadata={"help": "Log safety/asr and safety/over_refusal on held-out prompts while training."},
    )
    safety_curve_steps: int | None = field(
        default=None,
        metadata={
            "help": "Measure every N optimizer steps (and at step 0 and the last); default: 10 points."
        },
    )
    safety_curve_harmful: int = field(
        default=64, metadata={"help": "Harmful prompts to measure ASR on (held out from the training data)."}
    )
    safety_curve_safe: int = field(
        default=64,
        metadata={"help": "Safe prompts to measure over-refusal on (held out from the training data)."},
    )
    safety_curve_benchmark: str | None = field(
        default=None,
        metadata={"help": "Measure on this benchmark's prompts instead (e.g. vlguard); nothing is held out."},
    )
    safety_curve_benchmark_source: str | None = field(
        default=None, metadata={"help": "Hub id or folder of that benchmark; default: the benchmark's own."}
    )
    safety_curve_max_new_tokens: int = field(
        default=64, metadata={"help": "Answer length cap (the judge reads the opening of an answer)."}
    )
    safety_curve_batch_size: int = field(default=16, metadata={"help": "Prompts generated together."})


# -- prompts ------------------------------------------------------------------------------------------------------
def is_harmful(kind: str | None) -> bool:
    """Whether a training sample's prompt is one the model should refuse (VLGuard unsafe / safe_unsafe, MIS)."""
    return kind in HARMFUL_KINDS


def first_user_turn(
    messages: list[dict[str, Any]], images: list[Any]
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The opening user message of a conversation and the images its image parts stand for."""
    turn = next((message for message in messages if message["role"] == "user"), None)
    if turn is None:
        raise DataError("A training sample has no user turn to hold out as a safety-curve prompt.")
    count = sum(part["type"] == "image" for part in turn["content"])
    return [turn], list(images or [])[:count]


def hold_out_prompts(
    dataset: Dataset, harmful: int, safe: int, *, seed: int
) -> tuple[Dataset, list[dict[str, Any]]]:
    """`dataset` without the held-out samples, and the prompts: `harmful` harmful and `safe` safe first user turns.

    Samples are held out by (source, id), so every sample of a held-out image or conversation leaves the
    training set, also one of another kind than was asked for (counted in the log)."""
    if harmful < 0 or safe < 0 or harmful + safe == 0:
        raise DataError(
            f"safety_curve_harmful={harmful}, safety_curve_safe={safe}: ask for a positive number of prompts "
            "(e.g. 64 and 64), or turn safety_curve off."
        )
    kinds, ids, sources = dataset["kind"], dataset["id"], dataset["source"]
    groups: dict[tuple[str, str], list[int]] = {}
    for index, key in enumerate(zip(sources, ids, strict=True)):
        groups.setdefault(key, []).append(index)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    wanted = {True: harmful, False: safe}
    chosen: dict[bool, list[int]] = {True: [], False: []}
    held_out: set[int] = set()
    for key in order:
        if all(len(chosen[side]) >= wanted[side] for side in chosen):
            break
        taken = False
        for index in groups[key]:
            side = is_harmful(kinds[index])
            if len(chosen[side]) < wanted[side]:
                chosen[side].append(index)
                taken = True
        if taken:  # the whole group leaves the training set: its image is never seen in training
            held_out.update(groups[key])
    for side, name, flag in ((True, "harmful", "safety_curve_harmful"), (False, "safe", "safety_curve_safe")):
        if len(chosen[side]) < wanted[side]:
            raise DataError(
                f"The training data has only {len(chosen[side])} {name} samples to hold out for the safety curve, "
                f"{wanted[side]} asked: lower {flag}, or measure on a benchmark (safety_curve_benchmark)."
            )
    prompts = []
    for side in (True, False):
        for index in chosen[side]:
            row = dataset[index]
            messages, images = first_user_turn(row["messages"], row["images"])
            prompts.append(_prompt(messages, images, side, row["id"], row["kind"]))
    extra = len(held_out) - harmful - safe
    logger.info(
        "Safety curve: %d harmful + %d safe prompts held out of %d training samples (%d more samples of the same "
        "images or conversations left out with them)",
        harmful,
        safe,
        len(dataset),
        extra,
    )
    kept = [index for index in range(len(dataset)) if index not in held_out]
    return dataset.select(kept), prompts


def _prompt(messages: list, images: list, harmful: bool, prompt_id: str, kind: str) -> dict[str, Any]:
    """A safety-curve prompt: one user turn and its images, whether it is harmful, its id and kind (or subset)."""
    return {"messages": messages, "images": images, "harmful": harmful, "id": prompt_id, "kind": kind}


def benchmark_prompts(
    name: str, source: str | None, harmful: int, safe: int, *, seed: int
) -> list[dict[str, Any]]:
    """Up to `harmful` harmful and `safe` safe prompts of a benchmark (its default subsets), drawn with `seed`."""
    from vlsafe.evaluation.benchmarks import load_benchmark

    rows = list(load_benchmark(name, source))
    rng = random.Random(seed)
    prompts = []
    for side, wanted in ((True, harmful), (False, safe)):
        pool = [row for row in rows if bool(row["harmful"]) == side]
        picked = rng.sample(pool, min(wanted, len(pool)))
        if len(picked) < wanted:
            logger.warning(
                "Safety curve: %s has %d %s prompts, %d asked",
                name,
                len(pool),
                "harmful" if side else "safe",
                wanted,
            )
        prompts += [_prompt(row["messages"], row["images"], side, row["id"], row["subset"]) for row in picked]
    if not prompts:
        raise DataError(
            f"The benchmark {name} gave no prompts for the safety curve: check its source {source}."
        )
    return prompts


def curve_prompts(
    train_dataset: Dataset, args: SafetyCurveArguments, *, seed: int
) -> tuple[Dataset, list[dict[str, Any]] | None]:
    """The training set and the safety-curve prompts that `args` ask for (None with the curve off)."""
    if not args.safety_curve:
        return train_dataset, None
    if args.safety_curve_benchmark:
        return train_dataset, benchmark_prompts(
            args.safety_curve_benchmark,
            args.safety_curve_benchmark_source,
            args.safety_curve_harmful,
            args.safety_curve_safe,
            seed=seed,
        )
    return hold_out_prompts(train_dataset, args.safety_curve_harmful, args.safety_curve_safe, seed=seed)


# -- measuring ----------------------------------------------------------------------------------------------------
def curve_metrics(labels: list[str], harmful: list[bool]) -> dict[str, float]:
    """ASR (harmful prompts answered) and over-refusal (safe prompts refused), each only when it has prompts; an
    empty answer is neither a successful attack nor a refusal, as in vlsafe's evaluation metrics."""
    metrics = {}
    for key, side, counted in ((ASR, True, ANSWERED), (OVER_REFUSAL, False, REFUSED)):
        side_labels = [label for label, flag in zip(labels, harmful, strict=True) if flag == side]
        if side_labels:
            metrics[key] = sum(label == counted for label in side_labels) / len(side_labels)
    return metrics


def curve_points(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured points of a run's log history: step, ASR and over-refusal (where measured)."""
    points = []
    for entry in log_history:
        if ASR in entry or OVER_REFUSAL in entry:
            points.append(
                {"step": entry["step"], "asr": entry.get(ASR), "over_refusal": entry.get(OVER_REFUSAL)}
            )
    return points


class SafetyCurveCallback(TrainerCallback):
    """Measures ASR and over-refusal of the model being trained on fixed prompts (see the module docstring)."""

    def __init__(
        self,
        trainer: Trainer,
        prompts: list[dict[str, Any]],
        *,
        every: int | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 64,
        source: str = "held out from the training data",
    ):
        if not prompts:
            raise VlsafeError("The safety curve has no prompts to measure on.")
        if every is not None and every < 1:
            raise VlsafeError(f"safety_curve_steps={every}: measure every 1 or more steps.")
        self.trainer, self.prompts, self.every = trainer, prompts, every
        self.batch_size, self.max_new_tokens, self.source = batch_size, max_new_tokens, source
        self.harmful = [bool(row["harmful"]) for row in prompts]

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        kind = PartialState().distributed_type
        if kind == DistributedType.FSDP or (
            kind == DistributedType.DEEPSPEED and _zero_stage(self.trainer) == 3
        ):
            raise VlsafeError(
                f"safety_curve does not support {kind.value} with sharded weights (ZeRO-3/FSDP): generation would "
                "see only this process's shard. Use DDP (recipes/accelerate/multi_gpu.yaml) or ZeRO-2, or turn "
                "safety_curve off."
            )
        if self.every is None:
            self.every = max(1, math.ceil(state.max_steps / DEFAULT_POINTS))
        if not _measured(state, state.global_step):  # a resumed run measured its start already
            self.measure(state)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if state.global_step % self.every == 0:
            self.measure(state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not _measured(state, state.global_step):
            self.measure(state)

    def measure(self, state: TrainerState) -> dict[str, float]:
        """Answer the prompts with the current weights, judge them, log the metrics and redraw the plot."""
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(
            devices=devices
        ):  # generation leaves the training's random streams as they were
            try:
                records = generate_records(
                    model,
                    trainer.processing_class,
                    self.prompts,
                    [str(index) for index in range(len(self.prompts))],
                    batch_size=self.batch_size,
                    max_new_tokens=self.max_new_tokens,
                    progress=False,
                )
            finally:
                model.train(was_training)
        labels = [keyword_label(record["generation"]) for record in records]
        metrics = curve_metrics(labels, self.harmful)
        trainer.log(dict(metrics))
        logger.info(
            "Safety curve at step %d: %s",
            state.global_step,
            ", ".join(f"{key} {value:.1%}" for key, value in metrics.items()),
        )
        if trainer.is_world_process_zero():
            plot_curve(state.log_history, Path(trainer.args.output_dir) / PLOT)
        return metrics

    def summary(self, state: TrainerState) -> dict[str, Any]:
        """What the training summary records: where the prompts came from, how many, and the measured points."""
        return {
            "prompts": {"harmful": sum(self.harmful), "safe": len(self.harmful) - sum(self.harmful)},
            "source": self.source,
            "judge": "keyword",
            "every_steps": self.every,
            "max_new_tokens": self.max_new_tokens,
            "points": curve_points(state.log_history),
        }


def _measured(state: TrainerState, step: int) -> bool:
    return any(point["step"] == step for point in curve_points(state.log_history))


def _zero_stage(trainer: Trainer) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return getattr(plugin, "zero_stage", None)


def add_safety_curve(
    trainer: Trainer, prompts: list[dict[str, Any]] | None, args: SafetyCurveArguments
) -> SafetyCurveCallback | None:
    """Attach the safety-curve callback for `prompts` (from `curve_prompts`) to `trainer`; None: nothing to do."""
    if prompts is None:
        return None
    source = (
        f"benchmark {args.safety_curve_benchmark}"
        + (f" ({args.safety_curve_benchmark_source})" if args.safety_curve_benchmark_source else "")
        if args.safety_curve_benchmark
        else "held out from the training data"
    )
    callback = SafetyCurveCallback(
        trainer,
        prompts,
        every=args.safety_curve_steps,
        batch_size=args.safety_curve_batch_size,
        max_new_tokens=args.safety_curve_max_new_tokens,
        source=source,
    )
    trainer.add_callback(callback)
    return callback


def find_callback(trainer: Trainer) -> SafetyCurveCallback | None:
    """The trainer's safety-curve callback, if it has one."""
    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, SafetyCurveCallback)), None)


# -- plot ---------------------------------------------------------------------------------------------------------
def plot_curve(log_history: list[dict[str, Any]], path: str | Path) -> Path:
    """ASR and over-refusal against the step, with the training loss on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = curve_points(log_history)
    losses = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("asr", "ASR (lower better)"), ("over_refusal", "over-refusal (lower better)")):
        measured = [(p["step"], p[key]) for p in points if p[key] is not None]
        if measured:
            axis.plot(*zip(*measured, strict=True), marker="o", label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("share of held-out prompts")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    if losses:
        twin = axis.twinx()
        twin.plot(*zip(*losses, strict=True), color="gray", alpha=0.5, linewidth=1, label="training loss")
        twin.set_ylabel("training loss")
        twin.legend(loc="center right", fontsize=8)
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title("Safety while training (keyword judge)")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
