"""Refusal before and after safety tuning on the VLGuard test subsets, keyword-judged.

    python recipes/evaluate_safety.py --config recipes/configs/tiny/evaluate_safety.yaml
    python recipes/evaluate_safety.py --base_model llava-hf/llava-1.5-7b-hf --adapter outputs/sft_vlguard

One base model is loaded; the tuned answers come with the adapter on, the base answers with it disabled.
Prints a table (share of answers that refuse per subset) and writes `<output_dir>/results.json`.
A good safety adapter refuses `unsafes` and `safe_unsafes` and answers `safe_safes`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel
from trl import TrlParser

from vlsafe.data.vlguard import SUBSET_KINDS, VLGUARD_REPO, load_vlguard
from vlsafe.evaluation.refusal import format_table, refusal_rates
from vlsafe.modeling import load_model, load_processor

logger = logging.getLogger("vlsafe.recipes.evaluate_safety")


@dataclass
class EvaluationArguments:
    """What to evaluate, on which prompts."""

    base_model: str = field(metadata={"help": "Base model id or folder."})
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter folder or Hub id; None: base only."}
    )
    dataset: str = field(default=VLGUARD_REPO, metadata={"help": "VLGuard Hub dataset id or local folder."})
    subsets: list[str] = field(
        default_factory=lambda: list(SUBSET_KINDS), metadata={"help": "VLGuard test subsets."}
    )
    limit: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N prompts of each subset."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts generated together."})
    max_new_tokens: int = field(default=256, metadata={"help": "Answer length cap (VLGuard paper: 256)."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, bfloat16, float16, float32."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where results.json is written."})


def main(args: EvaluationArguments) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    subsets = {}
    for subset in args.subsets:
        dataset = load_vlguard(args.dataset, "test", subset)
        subsets[subset] = dataset.select(range(min(args.limit, len(dataset)))) if args.limit else dataset

    model = load_model(args.base_model, dtype=args.dtype)
    generation = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    results = {}
    if args.adapter is None:
        results["base"] = refusal_rates(model, load_processor(args.base_model), subsets, **generation)
    else:
        model = PeftModel.from_pretrained(model, args.adapter)
        with model.disable_adapter():
            results["base"] = refusal_rates(model, load_processor(args.base_model), subsets, **generation)
        results["tuned"] = refusal_rates(model, load_processor(args.adapter), subsets, **generation)

    print(format_table(results))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"config": vars(args), "results": results}, indent=1))
    logger.info("Wrote %s", out / "results.json")
    return results


if __name__ == "__main__":
    main(*TrlParser((EvaluationArguments,)).parse_args_and_config())
