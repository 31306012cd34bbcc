"""Evaluation throughput: vlsafe's generation engine vs a per-sample `generate` loop, same model and prompts;
with --engine vllm, vlsafe's vLLM engine as a third method, in the same run.

    python benchmarks/eval_throughput.py [--rounds 5]             # CPU mode: tiny LLaVA fixture
    python benchmarks/eval_throughput.py --shape llava-1.5-7b --prompts 512 --baseline_prompts 16 \
        --max_new_tokens 64 --lora_r 128                          # GPU mode: random-weight 7B shape
        [--engine vllm] [--threads N] [--warmup 4] [--json report.json] [--time_budget SECONDS]

The model carries a LoRA adapter (rank --lora_r, random non-zero weights, the same in every process), as
when evaluating a tuned adapter; prompts are VLGuard-shaped (one 400-1000 px image and an instruction from
the real train.json when the project's shared folder is present). Baseline (`loop`): the loop a user writes
first (VLGuard's own evaluation does this): for each prompt, apply the chat template, `model.generate`
greedily, decode. vlsafe (`engine`): `vlsafe.evaluation.generate.generate_records`, what
`recipes/evaluate_safety.py` runs (sorted by length, left padding, its batch size for the machine unless
--batch_size is given). Both count new tokens the same way (up to the first end-of-sequence token).

The methods alternate in fresh processes (loop, engine, loop, engine, ...) for --rounds rounds; each warms
up on --warmup prompts before it is timed. By default both run all --prompts prompts. With
--baseline_prompts N (the loop is slow on a GPU) the loop runs the first N of the shuffled prompts, a random
sample: its tokens/s does not depend on how many prompts it runs (one at a time), so the engine's tokens/s
on all prompts over it estimates the speed-up on the whole set; the engine is also timed on the same N
prompts, and that like-for-like ratio is reported too. The answers to the loop's prompts must be identical
in every round (on a GPU in bf16, batching can change a rare near-tie; the count is printed).

--engine vllm (vLLM installed: `make vllm-env` on a CPU, `pip install vllm` on a GPU) adds `vllm`:
`vlsafe.evaluation.vllm_engine.VllmGenerator`, what `--engine vllm` runs, with the adapter as a LoRARequest. vLLM
reads a checkpoint from disk, so the model and the adapter are saved once (`vllm-base`, `vllm-adapter` in the
scratch folder; for "tiny" the vLLM-servable tiny LLaVA, whose attention heads vLLM's CPU kernels take) and all
three methods load the same files. Its answers are compared with the engine's on every prompt. Start-up (model
load, vLLM's engine and KV cache) is reported apart: it is paid once per run, not per prompt. Each method's
prompts/s gives the minutes a suite of --suite_answers answers would take.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import rounds
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from shapes import FAMILY, SHAPES, build_model, build_processor, tiny_checkpoint, write_vlguard_train
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlsafe.data.vlguard import load_vlguard
from vlsafe.evaluation.engine import choose_batch_size
from vlsafe.evaluation.generate import generate_records, prompt_messages
from vlsafe.evaluation.vllm_engine import VllmGenerator, check_adapter
from vlsafe.fixtures.vllm_models import build_vllm_tiny_vlm, save_for_vllm
from vlsafe.modeling import family_of, lora_config

METHODS = {"loop": "per-sample generate loop", "engine": "vlsafe engine"}
VLLM_METHOD = {"vllm": "vlsafe vLLM engine"}
# Base and tuned answers to the suite the vLLM issue sizes: VLGuard test 1,558 + MM-SafetyBench 5,040 + FigStep
# 500 + XSTest 450 + VLSBench 2,241 prompts, twice.
SUITE_ANSWERS = 2 * (1558 + 5040 + 500 + 450 + 2241)
# vLLM's KV cache on a CPU, in GiB (VLLM_CPU_KVCACHE_SPACE, unless set): ample for the tiny model.
CPU_KV_CACHE_GIB = 1


def answer_length(token_ids: list[int], eos: set[int]) -> int:
    """New tokens of an answer up to (not including) its first end-of-sequence token, as the engine counts."""
    return next((index for index, token in enumerate(token_ids) if token in eos), len(token_ids))


@torch.inference_mode()
def per_sample_loop(model, processor, rows, max_new_tokens: int) -> tuple[float, int, list[str]]:
    """The baseline: one prompt at a time through `generate`; seconds, new tokens, answers."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    answers, new_tokens = [], 0
    start = time.perf_counter()
    for row in rows:
        inputs = processor.apply_chat_template(
            [prompt_messages(row)],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(model.device)
        if "pixel_values" in inputs:  # the processor returns float32; the model may be bf16
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        generated = output[0, inputs["input_ids"].shape[1] :]
        new_tokens += answer_length(generated.tolist(), eos)
        answers.append(processor.tokenizer.decode(generated, skip_special_tokens=True).strip())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, new_tokens, answers


def engine(model, processor, rows, batch_size: int, max_new_tokens: int) -> tuple[float, int, list[str]]:
    """vlsafe's engine, as recipes/evaluate_safety.py calls it; seconds, new tokens, answers."""
    keys = [str(i) for i in range(len(rows))]
    return timed_records(
        lambda: generate_records(
            model, processor, rows, keys, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False
        )
    )


def vllm_engine(generator, processor, rows) -> tuple[float, int, list[str]]:
    """vlsafe's vLLM engine as `--engine vllm` runs it (tuned: the adapter's LoRARequest); seconds, tokens, answers."""
    keys = [str(i) for i in range(len(rows))]
    return timed_records(lambda: generator.records(rows, keys, None, processor, tuned=True, progress=False))


def timed_records(generate: Callable[[], list[dict]]) -> tuple[float, int, list[str]]:
    """Seconds `generate` takes, the new tokens of its records, their answers."""
    start = time.perf_counter()
    records = generate()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (
        time.perf_counter() - start,
        sum(r["new_tokens"] for r in records),
        [r["generation"] for r in records],
    )


def save_vllm_checkpoint(args: argparse.Namespace) -> None:
    """The model every method loads with --engine vllm, and its random adapter, saved once in the scratch folder
    (vLLM reads checkpoints from disk). Built on the GPU when there is one; the parent frees it afterwards."""
    base, adapter = vllm_folders(args.scratch)
    if adapter.is_dir():
        return
    torch.manual_seed(0)
    if args.shape == "tiny":
        build_vllm_tiny_vlm("llava", base)
        model = AutoModelForImageTextToText.from_pretrained(base)
    else:
        processor = build_processor(args.shape, args.scratch)
        model = build_model(args.shape, processor, args.scratch, torch.bfloat16)
        save_for_vllm(model, processor, base)
    with_random_adapter(model, args.lora_r).save_pretrained(adapter)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def vllm_folders(scratch: Path) -> tuple[Path, Path]:
    return scratch / "vllm-base", scratch / "vllm-adapter"


def with_random_adapter(model, rank: int):
    """The model with a LoRA adapter whose B matrices are non-zero, so the adapter changes the answers."""
    lora = lora_config(family_of(model.config.model_type), r=rank, alpha=2 * rank, dropout=0.0)
    model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            values = torch.randn(parameter.shape, generator=generator) * 0.01
            parameter.data.copy_(values.to(parameter.device, parameter.dtype))
    return model.eval()


def load_prompts(scratch: Path, count: int) -> Dataset:
    """The first `count` VLGuard train samples after a seeded shuffle, cut to their user turn."""
    return (
        load_vlguard(scratch / "vlguard", "train")
        .shuffle(seed=0)
        .select(range(count))
        .map(lambda row: {"messages": row["messages"][:1]})  # the user turn: a prompt
    )


def measure(args: argparse.Namespace, method: str) -> dict:
    """One method's timed run in this (fresh) process, after its warm-up; its start-up is timed apart. The loop
    answers the loop's prompts; the engines answer all, and the loop's prompts again for the like-for-like ratio."""
    torch.manual_seed(0)  # the 7B shapes are built with random weights: the same ones in every process
    prompts = load_prompts(args.scratch, args.prompts)
    rows = list(prompts)
    checked = rows[: args.baseline_prompts]
    began = time.perf_counter()
    run, batch_size, close = start_method(args, method, prompts)
    startup = time.perf_counter() - began
    timed = checked if method == "loop" else rows
    run(rows[: args.warmup])
    seconds, tokens, answers = run(timed)
    result = {"prompts": len(timed), "answers": answers}
    if len(timed) > len(checked):  # the engine's figure on the loop's prompts, for the like-for-like ratio
        subset_s, subset_tokens, _ = run(checked)
        result["subset_tokens_per_s"] = subset_tokens / subset_s
    if batch_size is not None:
        result["batch_size"] = batch_size
    close()
    return result | figures(args, seconds, tokens, len(timed), startup)


def start_method(
    args: argparse.Namespace, method: str, prompts: Dataset
) -> tuple[Callable, int | None, Callable]:
    """`method` loaded and ready: a function timing it on some rows (seconds, new tokens, answers), its batch size
    (None: vLLM schedules its own), and what frees it."""
    on_gpu = torch.cuda.is_available()
    dtype = "bfloat16" if on_gpu else "float32"
    base, adapter = vllm_folders(args.scratch)
    if method == "vllm":
        if not on_gpu:  # vLLM's CPU build otherwise reserves 90% of the RAM for its KV cache
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        processor = AutoProcessor.from_pretrained(base)
        generator = VllmGenerator(
            str(base),
            max_new_tokens=args.max_new_tokens,
            images_per_prompt=1,
            adapter=check_adapter(adapter, str(base)),
            dtype=dtype,
        )
        return (lambda rows: vllm_engine(generator, processor, rows)), None, generator.close
    if args.engine == "vllm":  # the checkpoint vLLM loads, with its saved adapter
        processor = AutoProcessor.from_pretrained(base)
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=getattr(torch, dtype))
        model = PeftModel.from_pretrained(model.to("cuda" if on_gpu else "cpu"), adapter).eval()
    else:
        processor = build_processor(args.shape, args.scratch)
        model = build_model(args.shape, processor, args.scratch, getattr(torch, dtype))
        model = with_random_adapter(model, args.lora_r)
    if method == "loop":
        return (lambda rows: per_sample_loop(model, processor, rows, args.max_new_tokens)), 1, lambda: None
    batch_size = args.batch_size or choose_batch_size(model, processor, {"all": prompts}, args.max_new_tokens)
    return (
        (lambda rows: engine(model, processor, rows, batch_size, args.max_new_tokens)),
        batch_size,
        lambda: None,
    )


def figures(args: argparse.Namespace, seconds: float, tokens: int, prompts: int, startup: float) -> dict:
    """A method's timed figures, and the minutes a suite of --suite_answers answers would take at its pace."""
    return {
        "seconds": seconds,
        "new_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "prompts_per_s": prompts / seconds,
        "suite_minutes": args.suite_answers / (prompts / seconds) / 60,
        "startup_s": startup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--baseline_prompts", type=int, help="prompts of the loop (default: all --prompts)")
    parser.add_argument("--batch_size", type=int, help="default: evaluate_safety.py's choice for the machine")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4, help="prompts each method runs untimed first")
    parser.add_argument("--scratch", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument(
        "--engine", choices=("transformers", "vllm"), default="transformers", help="vllm: add vLLM's engine"
    )
    parser.add_argument(
        "--suite_answers",
        type=int,
        default=SUITE_ANSWERS,
        help="answers of the suite whose minutes are estimated",
    )
    rounds.add_arguments(parser, [*METHODS, *VLLM_METHOD])
    args = parser.parse_args()
    rounds.check_arguments(parser, args)
    if args.prompts < 1 or (args.baseline_prompts is not None and args.baseline_prompts < 1):
        parser.error("--prompts and --baseline_prompts: give at least 1 prompt")
    args.baseline_prompts = min(args.baseline_prompts or args.prompts, args.prompts)
    if args.child:
        rounds.run_child(args, measure)
        return

    args.scratch = args.scratch or Path(tempfile.mkdtemp(prefix="vlsafe-eval-bench-"))
    write_vlguard_train(args.scratch / "vlguard", args.prompts)  # >= 1 sample per image: enough prompts
    tiny_checkpoint(FAMILY[args.shape], args.scratch)  # built once, loaded by every child
    methods = METHODS | (VLLM_METHOD if args.engine == "vllm" else {})
    if args.engine == "vllm":
        save_vllm_checkpoint(args)
    results = rounds.alternate(__file__, list(methods), args, _child_options(args))
    checks = [answers_check(results, "loop", args.baseline_prompts)]
    if args.engine == "vllm":
        checks.append(answers_check(results, "vllm", args.prompts))
    for result in results:  # the answers are compared above; the report keeps the figures
        for method in methods:
            result[method].pop("answers")
    subset = args.baseline_prompts < args.prompts
    figures = [
        rounds.Figure("tokens_per_s", "tokens/s"),
        rounds.Figure("prompts_per_s", "prompts/s", 2),
        rounds.Figure("suite_minutes", f"minutes for {args.suite_answers:,} answers"),
        rounds.Figure("startup_s", "start-up s"),
    ]
    ratios = [
        rounds.Ratio(
            "speed-up engine / loop (tokens/s)", ("engine", "tokens_per_s"), ("loop", "tokens_per_s")
        )
    ]
    if args.engine == "vllm":
        ratios.append(
            rounds.Ratio(
                "speed-up vllm / engine (tokens/s)", ("vllm", "tokens_per_s"), ("engine", "tokens_per_s")
            )
        )
    notes = []
    if subset:
        figures.append(
            rounds.Figure("subset_tokens_per_s", f"tokens/s on the loop's {args.baseline_prompts}")
        )
        ratios.append(
            rounds.Ratio(
                f"same {args.baseline_prompts} prompts: engine / loop",
                ("engine", "subset_tokens_per_s"),
                ("loop", "tokens_per_s"),
            )
        )
        notes.append(
            f"The loop ran a random sample of {args.baseline_prompts} of the {args.prompts} prompts (the "
            "first of the seeded shuffle): one prompt at a time, its tokens/s does not depend on how many it "
            "runs, while the engine's grows with the prompts it can batch. The first ratio estimates the "
            "speed-up over all prompts; the second times the engine on the loop's prompts only."
        )
    report = rounds.build_report(
        title="Evaluation throughput",
        script=__file__,
        argv=sys.argv[1:],
        args=args,
        methods=methods,
        rounds=results,
        figures=figures,
        ratios=ratios,
        checks=checks,
        settings={
            "shape": f"{args.shape} ({FAMILY[args.shape]})",
            "adapter": f"LoRA r{args.lora_r} (random non-zero weights)",
            "prompts": f"loop {args.baseline_prompts}, engine {args.prompts}"
            + (f", vllm {args.prompts}" if args.engine == "vllm" else ""),
            "decoding": f"greedy, max_new_tokens {args.max_new_tokens}",
            "engine batch": results[0]["engine"]["batch_size"],
            "warm-up prompts": args.warmup,
        },
        notes=notes,
    )
    rounds.publish(report, args.json)


def answers_check(results: list[dict[str, dict]], method: str, prompts: int) -> rounds.Check:
    """Per round: how many of `method`'s answers (on its first `prompts` prompts) the engine gave word for word."""
    values, passed = [], True
    for result in results:
        theirs, engine_ = result[method]["answers"][:prompts], result["engine"]["answers"][:prompts]
        same = sum(a == b for a, b in zip(theirs, engine_, strict=True))
        values.append(f"{same}/{len(theirs)}")
        passed &= same == len(theirs)
    return rounds.Check(f"identical answers, {method} and engine", values, passed)


def _child_options(args: argparse.Namespace) -> list[str]:
    """This script's measurement options, resolved, for the child processes."""
    argv = ["--shape", args.shape, "--prompts", str(args.prompts)]
    argv += ["--baseline_prompts", str(args.baseline_prompts), "--max_new_tokens", str(args.max_new_tokens)]
    argv += ["--lora_r", str(args.lora_r), "--warmup", str(args.warmup), "--scratch", str(args.scratch)]
    argv += ["--engine", args.engine, "--suite_answers", str(args.suite_answers)]
    return argv + (["--batch_size", str(args.batch_size)] if args.batch_size else [])


if __name__ == "__main__":
    main()
