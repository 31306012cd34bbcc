"""Data preparation speed: VLGuard's train split (zip + json, as on the Hub) to the dataset the trainer gets.

    python benchmarks/data_prep.py [--images 2000] [--shape llava-1.5-7b|qwen2.5-vl-7b|tiny]

Writes a VLGuard folder in the Hub layout (the real train.json from the project's shared folder when
present, else synthetic records; 400-1000 px JPEGs), then runs the conversion twice, each in a fresh process
as two runs of a recipe would, sharing one vlsafe cache: the first extracts the zip and counts tokens, the
second finds the extraction in the cache. Each run: `load_vlguard` (extract, parse, check every image), then
`drop_too_long` at max_length 2048 with the real-size processor (what `build_sft_trainer` does). Prints
seconds per stage and run as a table, and the ratio to the baseline token count (the full processor
run on every image, as before), checked to give the same counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shapes import SHAPES, build_processor, write_vlguard_train


def convert(folder: Path, shape: str, scratch: Path, baseline: bool) -> dict[str, float]:
    """One run of the conversion, timed per stage; with `baseline`, also the token count that runs the full
    processor (every image preprocessed) on every sample, as vlsafe did before, and must agree."""
    from vlsafe.data.length import drop_too_long, processed_lengths, token_lengths
    from vlsafe.data.vlguard import load_vlguard

    processor = build_processor(shape, scratch)
    start = time.perf_counter()
    dataset = load_vlguard(folder, "train")
    loaded = time.perf_counter()
    dataset = drop_too_long(dataset, processor, max_length=2048)
    done = time.perf_counter()
    run = {
        "samples": len(dataset),
        "load_s": loaded - start,
        "length_s": done - loaded,
        "total_s": done - start,
    }
    if baseline:
        start = time.perf_counter()
        exact = processed_lengths(dataset, processor)
        run["baseline_length_s"] = time.perf_counter() - start
        assert exact == token_lengths(dataset, processor), "the size-based token count disagrees"
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shape", choices=SHAPES, default="llava-1.5-7b")
    parser.add_argument("--scratch", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the full-processor token count")
    parser.add_argument("--run-once", choices=("cold", "warm"), help=argparse.SUPPRESS)  # one timed child run
    args = parser.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="vlsafe-data-prep-"))
    if args.run_once:
        baseline = args.run_once == "cold" and not args.no_baseline
        print(json.dumps(convert(scratch / "vlguard", args.shape, scratch, baseline)))
        return

    start = time.perf_counter()
    write_vlguard_train(scratch / "vlguard", args.images)
    print(
        f"wrote {args.images} images in VLGuard's layout in {time.perf_counter() - start:.1f} s ({scratch})"
    )
    env = os.environ | {"VLSAFE_CACHE": str(scratch / "cache")}
    child = [sys.executable, __file__, "--shape", args.shape, "--scratch", str(scratch)]
    if args.no_baseline:
        child.append("--no-baseline")
    runs = []
    for cache in ("cold", "warm"):
        result = subprocess.run(
            child + ["--run-once", cache], env=env, capture_output=True, text=True, check=False
        )
        if result.returncode:
            sys.exit(f"the conversion failed:\n{result.stderr[-4000:]}")
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"| run (shape {args.shape}) | samples | load + check s | token count s | total s |")
    print("|---|---|---|---|---|")
    for name, run in zip(("first (cold cache)", "second (warm cache)"), runs, strict=True):
        print(
            f"| {name} | {run['samples']} | {run['load_s']:.1f} | {run['length_s']:.1f} | {run['total_s']:.1f} |"
        )
    print(f"second run / first run: {runs[1]['total_s'] / runs[0]['total_s']:.2f}")
    if "baseline_length_s" in runs[0]:
        before = runs[0]["baseline_length_s"]
        print(
            f"token count with the full processor on every image (baseline): {before:.1f} s; "
            f"size-based count: {before / runs[0]['length_s']:.1f}x faster, same counts"
        )


if __name__ == "__main__":
    main()
