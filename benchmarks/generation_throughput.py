"""Generation throughput of vlsafe's engine: batched vs one prompt at a time, same model, prompts and run.

    python benchmarks/generation_throughput.py [--model outputs/demo/fixtures/tiny-llava] [--prompts 192]
        [--batch_size 16] [--max_new_tokens 32] [--device cpu|cuda]

Builds the tiny LLaVA and the synthetic VLGuard test prompts if no model/data is given. Prints tokens/s
and prompts/s for both settings and the speed-up ratio; answers are checked to be identical.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vlsafe.data.vlguard import load_vlguard
from vlsafe.evaluation.generate import generate_records
from vlsafe.fixtures import build_tiny_vlm, write_synthetic_vlguard
from vlsafe.modeling import load_model, load_processor


def measure(model, processor, rows, batch_size: int, max_new_tokens: int) -> tuple[float, int, list[str]]:
    keys = [str(i) for i in range(len(rows))]
    start = time.perf_counter()
    records = generate_records(
        model, processor, rows, keys, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False
    )
    seconds = time.perf_counter() - start
    return seconds, sum(r["new_tokens"] for r in records), [r["generation"] for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--prompts", type=int, default=192)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="vlsafe-bench-"))
    model_path = args.model or str(build_tiny_vlm("llava", scratch / "tiny-llava"))
    data = args.data or str(write_synthetic_vlguard(scratch / "vlguard"))
    rows = [
        row
        for subset in ("unsafes", "safe_unsafes", "safe_safes")
        for row in load_vlguard(data, "test", subset)
    ]
    rows = (rows * (args.prompts // len(rows) + 1))[: args.prompts]
    model = load_model(model_path, dtype="float32").to(args.device)
    processor = load_processor(model_path)
    measure(model, processor, rows[:4], args.batch_size, 4)  # warm-up
    one_s, one_tokens, one_answers = measure(model, processor, rows, 1, args.max_new_tokens)
    batch_s, batch_tokens, batch_answers = measure(
        model, processor, rows, args.batch_size, args.max_new_tokens
    )
    assert batch_answers == one_answers, "batched answers differ from batch-size-1 answers"
    print(f"model {model_path} on {args.device}, {len(rows)} prompts, max_new_tokens {args.max_new_tokens}")
    print(
        f"batch size 1:  {one_tokens / one_s:8.1f} tokens/s  {len(rows) / one_s:6.2f} prompts/s  ({one_s:.1f} s)"
    )
    print(
        f"batch size {args.batch_size}: {batch_tokens / batch_s:8.1f} tokens/s  {len(rows) / batch_s:6.2f} prompts/s  ({batch_s:.1f} s)"
    )
    print(f"speed-up: {one_s / batch_s:.2f}x (identical answers)")


if __name__ == "__main__":
    main()
