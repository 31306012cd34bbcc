"""Evaluation throughput: vlsafe's generation engine vs a per-sample `generate` loop, same model and prompts.

    python benchmarks/eval_throughput.py                          # CPU mode: tiny LLaVA fixture
    python benchmarks/eval_throughput.py --shape llava-1.5-7b --prompts 512 --max_new_tokens 64

The model carries a LoRA adapter (rank --lora_r, random non-zero weights), as when evaluating a tuned
adapter; prompts are VLGuard-shaped (one 400-1000 px image and an instruction from the real train.json when
the project's shared folder is present). Baseline: the loop a user writes first (VLGuard's own evaluation
does this): for each prompt, apply the chat template, `model.generate` greedily, decode. vlsafe:
`vlsafe.evaluation.generate.generate_records`, what `recipes/evaluate_safety.py` runs (sorted by length,
left padding, its batch size for the machine unless --batch_size is given). The baseline runs on
--baseline_prompts of the prompts (it is slow) and both are compared as tokens/s; the answers to those
prompts must be identical (on a GPU in bf16, batching can change a rare near-tie; the count is printed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from peft import get_peft_model
from shapes import FAMILY, SHAPES, build_model, build_processor, write_vlguard_train

from vlsafe.data.vlguard import load_vlguard
from vlsafe.evaluation.generate import generate_records, prompt_messages
from vlsafe.evaluation.harness import choose_batch_size
from vlsafe.modeling import family_of, lora_config


@torch.inference_mode()
def per_sample_loop(model, processor, rows, max_new_tokens: int) -> tuple[float, int, list[str]]:
    """The baseline: one prompt at a time through `generate`."""
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
        new_tokens += int((generated != processor.tokenizer.pad_token_id).sum())
        answers.append(processor.tokenizer.decode(generated, skip_special_tokens=True).strip())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, new_tokens, answers


def engine(model, processor, rows, batch_size: int, max_new_tokens: int) -> tuple[float, int, list[str]]:
    """vlsafe's engine, as recipes/evaluate_safety.py calls it."""
    start = time.perf_counter()
    records = generate_records(
        model,
        processor,
        rows,
        [str(i) for i in range(len(rows))],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=False,
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (
        time.perf_counter() - start,
        sum(r["new_tokens"] for r in records),
        [r["generation"] for r in records],
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--baseline_prompts", type=int, default=48)
    parser.add_argument("--batch_size", type=int, help="default: evaluate_safety.py's choice for the machine")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--lora_r", type=int, default=16)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vlsafe-eval-bench-"))
    on_gpu = torch.cuda.is_available()

    write_vlguard_train(scratch / "vlguard", args.prompts)
    prompts = (
        load_vlguard(scratch / "vlguard", "train")
        .shuffle(seed=0)
        .select(range(args.prompts))
        .map(lambda row: {"messages": row["messages"][:1]})  # the user turn: a prompt
    )
    rows = list(prompts)
    processor = build_processor(args.shape, scratch)
    model = build_model(args.shape, processor, scratch, torch.bfloat16 if on_gpu else torch.float32)
    model = with_random_adapter(model, args.lora_r)
    batch_size = args.batch_size or choose_batch_size(model, processor, {"all": prompts}, args.max_new_tokens)
    engine(model, processor, rows[:4], batch_size, 4)  # warm-up (kernels, allocator)
    per_sample_loop(model, processor, rows[:2], 4)

    checked = rows[: args.baseline_prompts]
    loop_s, loop_tokens, loop_answers = per_sample_loop(model, processor, checked, args.max_new_tokens)
    engine_s, engine_tokens, engine_answers = engine(model, processor, rows, batch_size, args.max_new_tokens)
    same = sum(a == b for a, b in zip(loop_answers, engine_answers, strict=False))
    device = torch.cuda.get_device_name() if on_gpu else "CPU"
    print(
        f"{args.shape} ({FAMILY[args.shape]}) + LoRA r{args.lora_r} on {device}; max_new_tokens "
        f"{args.max_new_tokens}; baseline on {len(checked)} prompts, engine on {len(rows)}"
    )
    print("| method | prompts | tokens/s | prompts/s |")
    print("|---|---|---|---|")
    print(
        f"| per-sample generate loop | {len(checked)} | {loop_tokens / loop_s:.1f} | {len(checked) / loop_s:.2f} |"
    )
    print(
        f"| vlsafe engine, batch {batch_size} | {len(rows)} | {engine_tokens / engine_s:.1f} | "
        f"{len(rows) / engine_s:.2f} |"
    )
    print(f"speed-up (tokens/s): {(engine_tokens / engine_s) / (loop_tokens / loop_s):.2f}x")
    print(f"identical answers: {same}/{len(checked)}")


if __name__ == "__main__":
    main()
