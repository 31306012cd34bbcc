"""Data preparation speed: VLGuard's train split (zip + json, as on the Hub) to the dataset the trainer gets.

    python benchmarks/data_prep.py [--rounds 5] [--images 2000] [--shape llava-1.5-7b|qwen2.5-vl-7b|tiny]
        [--threads N] [--json report.json] [--time_budget SECONDS]

Writes a VLGuard folder in the Hub layout (the real train.json from the project's shared folder when
present, else synthetic records; 400-1000 px JPEGs), then converts it as a recipe does: `load_vlguard`
(extract the zip, parse, decode every image to check it), count every sample's tokens with the real-size
processor, `drop_too_long` at max_length 2048 (what `build_sft_trainer` does). Three methods, each in a
fresh process, alternating for --rounds rounds:

- `full`: the token count that runs the full processor on every image (what vlsafe did before), cold cache;
- `vlsafe`: vlsafe's size-based count (`token_lengths`), cold cache (its own empty vlsafe cache);
- `warm`: the same, with the cache the round's `vlsafe` run filled (a second run of a recipe).

Reports seconds per stage, the speed-up of the token count and of the whole conversion as medians of the
per-round ratios, and checks every round that all three counted the same tokens for every sample.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import rounds
from shapes import FAMILY, SHAPES, build_processor, tiny_checkpoint, write_vlguard_train

METHODS = {
    "full": "full processor count (before)",
    "vlsafe": "vlsafe size-based count, cold cache",
    "warm": "vlsafe, warm cache",
}
MAX_LENGTH = 2048


def convert(args: argparse.Namespace, method: str) -> dict:
    """One timed conversion in this (fresh) process, with the token count of `method`."""
    from vlsafe.data.length import drop_too_long, processed_lengths, token_lengths
    from vlsafe.data.vlguard import load_vlguard

    processor = build_processor(args.shape, args.scratch)
    count = processed_lengths if method == "full" else token_lengths
    count(load_vlguard(args.scratch / "warmup", "train"), processor)  # untimed: first-call costs
    start = time.perf_counter()
    dataset = load_vlguard(args.scratch / "vlguard", "train")
    loaded = time.perf_counter()
    lengths = count(dataset, processor)
    counted = time.perf_counter()
    kept = drop_too_long(dataset, processor, max_length=MAX_LENGTH, lengths=lengths)
    done = time.perf_counter()
    return {
        "samples": len(dataset),
        "kept": len(kept),
        "load_s": loaded - start,
        "count_s": counted - loaded,
        "total_s": done - start,
        "lengths_sha256": hashlib.sha256(json.dumps(lengths).encode()).hexdigest(),
    }


def cache_for(scratch: Path) -> Callable[[str, int], dict[str, str]]:
    """The vlsafe cache of each run: a new one for `full` and `vlsafe` (cold), the round's `vlsafe` one for
    `warm`; earlier rounds' caches are deleted as a round starts (each holds every extracted image)."""

    def env(method: str, index: int) -> dict[str, str]:
        if method == "full":
            for old in scratch.glob("cache-*"):
                shutil.rmtree(old)
        name = "vlsafe" if method == "warm" else method
        return {"VLSAFE_CACHE": str(scratch / f"cache-{index}-{name}")}

    return env


def counts_check(results: list[dict[str, dict]]) -> rounds.Check:
    """Per round: whether the three methods counted the same tokens for every sample."""
    values, passed = [], True
    for result in results:
        same = len({result[method]["lengths_sha256"] for method in METHODS}) == 1
        values.append(f"same counts ({result['vlsafe']['samples']} samples)" if same else "counts differ")
        passed &= same
    return rounds.Check("identical token counts", values, passed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shape", choices=SHAPES, default="llava-1.5-7b")
    parser.add_argument("--scratch", type=Path, help="work folder (default: a new temporary one)")
    rounds.add_arguments(parser, list(METHODS))
    args = parser.parse_args()
    rounds.check_arguments(parser, args)
    if args.child:
        rounds.run_child(args, convert)
        return

    args.scratch = args.scratch or Path(tempfile.mkdtemp(prefix="vlsafe-data-prep-"))
    start = time.perf_counter()
    write_vlguard_train(args.scratch / "vlguard", args.images)
    write_vlguard_train(args.scratch / "warmup", 4, seed=1)
    tiny_checkpoint(FAMILY[args.shape], args.scratch)  # built once, loaded by every child
    print(
        f"wrote {args.images} images in VLGuard's layout in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    child = ["--images", str(args.images), "--shape", args.shape, "--scratch", str(args.scratch)]
    results = rounds.alternate(__file__, list(METHODS), args, child, env=cache_for(args.scratch))
    for old in args.scratch.glob("cache-*"):
        shutil.rmtree(old)
    checks = [counts_check(results)]
    for result in results:  # compared above; the report keeps the figures
        for method in METHODS:
            result[method].pop("lengths_sha256")
    first = results[0]["vlsafe"]
    report = rounds.build_report(
        title="Data preparation",
        script=__file__,
        argv=sys.argv[1:],
        args=args,
        methods=METHODS,
        rounds=results,
        figures=[
            rounds.Figure("total_s", "total s"),
            rounds.Figure("load_s", "load + check s"),
            rounds.Figure("count_s", "token count s"),
        ],
        ratios=[
            rounds.Ratio("token count: full / size-based", ("full", "count_s"), ("vlsafe", "count_s")),
            rounds.Ratio("whole conversion: full / vlsafe", ("full", "total_s"), ("vlsafe", "total_s")),
        ],
        checks=checks,
        settings={
            "processor": f"{args.shape} image preprocessing",
            "images": args.images,
            "samples": f"{first['samples']} ({first['kept']} within max_length {MAX_LENGTH})",
        },
    )
    rounds.publish(report, args.json)


if __name__ == "__main__":
    main()
