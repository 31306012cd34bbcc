"""Safety evaluation of a base model and/or a safety adapter: ASR, over-refusal and helpfulness.

    python recipes/evaluate_safety.py --config recipes/configs/tiny/evaluate_safety.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/evaluate_safety.py \
        --base_model llava-hf/llava-1.5-7b-hf --adapter outputs/llava-1.5-7b/sft_vlguard \
        --judges keyword api --judge_api_base_url https://api.openai.com/v1 --judge_api_model gpt-4o

Benchmarks of harmful prompts only (MIS) show over-refusal with extra safe prompts, run as the subset
`benign` (first user turn of each LLaVA/ShareGPT conversation; keyword judge: refusal rate = over-refusal):

    python recipes/evaluate_safety.py --benchmark mis --base_model OpenGVLab/InternVL3-8B-hf \
        --adapter outputs/internvl3-8b/sft_mis --benign_prompts data/general/multi_image_qa_test.json

Several benchmarks in one run (the model is loaded once; base and tuned on all of them, one report):

    python recipes/evaluate_safety.py --benchmark vlguard figstep xstest mmsafetybench --benchmark_root /data/bench \
        --base_model llava-hf/llava-1.5-7b-hf --adapter outputs/llava-1.5-7b/sft_vlguard
    python recipes/evaluate_safety.py --benchmark all --benchmark_root /data/bench ...   # every benchmark

Writes <output_dir>/results.json (per-sample generations and verdicts; metrics with n and 95% CIs, per
benchmark subset and category; the suite summary; judge agreement), <output_dir>/results.png,
<output_dir>/disagreements.jsonl with several judges, and prints the table. An interrupted run resumes where it
stopped. When the adapter is a local folder, its model card is updated with the numbers. The same script runs as
`vlsafe eval --config <model>` (vlsafe.cli).
"""

from __future__ import annotations

import logging
from pathlib import Path

from trl import TrlParser

from vlsafe.cards import update_card
from vlsafe.evaluation.config import EvaluationConfig
from vlsafe.evaluation.report import format_table, write_results
from vlsafe.evaluation.run import run_evaluation


def main(config: EvaluationConfig) -> dict | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    results = run_evaluation(config)
    if results is None:  # not the main process
        return None
    path = write_results(results, config.output_dir)
    print(format_table(results))
    if config.adapter and Path(config.adapter).is_dir():
        update_card(config.adapter, path)
    return results


def make_parser(prog: str | None = None, **kwargs) -> TrlParser:
    """The evaluation's arguments; `vlsafe eval` parses with it too."""
    return TrlParser((EvaluationConfig,), prog=prog, **kwargs)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
