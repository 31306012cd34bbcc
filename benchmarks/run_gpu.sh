#!/usr/bin/env bash
# The GPU mode of the benchmarks as one device run of about 6 minutes (under 7) on one H200: training
# throughput (vlsafe recipe vs TRL defaults) and evaluation throughput (engine vs per-sample loop) on the
# random-weight LLaVA-1.5-7B shape, each as alternating fresh processes for ROUNDS rounds (default 3), cut
# short by a time budget per benchmark (the report then says how many rounds ran). Writes each report as
# Markdown (ready for benchmarks/RESULTS.md) and JSON to $OUT (or outputs/benchmarks), logs next to them.
#
# The device has torch and peft but not trl/datasets/a recent transformers: carry them as wheels (see the
# device README), downloaded here into .whl/ for its Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     trl==1.16.0 transformers==5.23.0 datasets==5.2.0 dill multiprocess huggingface_hub==2.4.0 xxhash liger-kernel
# and run with carry [".whl"]:  bash benchmarks/run_gpu.sh
# SHAPE=tiny STEPS=2 PROMPTS=8 bash benchmarks/run_gpu.sh checks the script itself on a CPU.
#
# Where vLLM imports, the evaluation benchmark runs vlsafe's vLLM engine as a third method in the same rounds
# (eval_throughput.py --engine vllm: same prompts, same saved checkpoint and adapter; ENGINE=transformers skips
# it). The device image has no vLLM, and its wheels (hundreds of MB with their CUDA kernels) are far over the
# 64 MiB a device call may carry, so there it is skipped with a line saying so. With vLLM, give the evaluation
# more time (EVAL_BUDGET=400: the 7B checkpoint is saved once, ~14 GB, and each vLLM process starts its engine).
#
# Budget (estimates for one H200, not yet measured): a training process ~30-35 s (imports, random 7B on the
# GPU, 2 + 10 steps), an evaluation process ~35-45 s (the loop: 8 prompts x 64 tokens at batch 1), so three
# rounds of each fit in TRAIN_BUDGET + EVAL_BUDGET = 370 s after ~30 s of wheel installs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/toolkit:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
SHAPE="${SHAPE:-llava-1.5-7b}"
ROUNDS="${ROUNDS:-3}"
STEPS="${STEPS:-10}"                 # timed training steps per process, after 2 warm-up steps
PROMPTS="${PROMPTS:-256}"            # the engine's prompts (two batches of 128 on an H200)
BASELINE_PROMPTS="${BASELINE_PROMPTS:-8}"  # the loop's: a random sample of them (see eval_throughput.py)
TRAIN_BUDGET="${TRAIN_BUDGET:-200}"  # seconds: no round starts that would likely end after this
EVAL_BUDGET="${EVAL_BUDGET:-170}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"    # dense bf16 of an H200 SXM (NVL: 835), for the MFU estimate
OUT_DIR="${OUT:-outputs/benchmarks}"
if [ -z "${ENGINE:-}" ]; then
  if "$PYTHON" -c "import vllm" 2>/dev/null; then ENGINE=vllm; else
    ENGINE=transformers
    echo "vLLM is not installed here: the evaluation benchmark runs the transformers engine only" >&2
  fi
fi
mkdir -p "$OUT_DIR"
"$PYTHON" benchmarks/train_throughput.py --shape "$SHAPE" --batch_size 8 --steps "$STEPS" --warmup 2 \
  --lora_r 128 --peak_tflops "$PEAK_TFLOPS" --rounds "$ROUNDS" --time_budget "$TRAIN_BUDGET" \
  --json "$OUT_DIR/train_throughput.json" 2> >(tee "$OUT_DIR/train_throughput.log" >&2) \
  | tee "$OUT_DIR/train_throughput.md"
"$PYTHON" benchmarks/eval_throughput.py --shape "$SHAPE" --prompts "$PROMPTS" \
  --baseline_prompts "$BASELINE_PROMPTS" --max_new_tokens 64 --lora_r 128 --warmup 2 --rounds "$ROUNDS" \
  --engine "$ENGINE" --time_budget "$EVAL_BUDGET" --json "$OUT_DIR/eval_throughput.json" \
  2> >(tee "$OUT_DIR/eval_throughput.log" >&2) | tee "$OUT_DIR/eval_throughput.md"
