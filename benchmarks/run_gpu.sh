#!/usr/bin/env bash
# The GPU mode of the benchmarks as one run of about 6 minutes on one H200 (issue 8's device check):
# training throughput (vlsafe recipe vs TRL defaults) and evaluation throughput (engine vs per-sample loop)
# on the random-weight LLaVA-1.5-7B shape. Prints the tables and writes them to $OUT (or outputs/benchmarks).
#
# The device has torch and peft but not trl/datasets/a recent transformers: carry them as wheels (see the
# device README), downloaded here into .whl/ for its Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     trl==1.16.0 transformers==5.23.0 datasets==5.2.0 dill multiprocess huggingface_hub==2.4.0 xxhash liger-kernel
# and run with carry [".whl"]:  bash benchmarks/run_gpu.sh
# SHAPE=tiny STEPS=2 PROMPTS=8 bash benchmarks/run_gpu.sh checks the script itself on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/toolkit:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
SHAPE="${SHAPE:-llava-1.5-7b}"
STEPS="${STEPS:-20}"
PROMPTS="${PROMPTS:-512}"
OUT_DIR="${OUT:-outputs/benchmarks}"
mkdir -p "$OUT_DIR"
"$PYTHON" -c 'import torch, transformers, trl, peft, datasets; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")' | tee "$OUT_DIR/versions.txt"
"$PYTHON" benchmarks/train_throughput.py --shape "$SHAPE" --batch_size 8 --steps "$STEPS" --warmup 3 --rounds 1 \
  --lora_r 128 --peak_tflops 790 2>&1 | tee "$OUT_DIR/train_throughput.txt"
"$PYTHON" benchmarks/eval_throughput.py --shape "$SHAPE" --prompts "$PROMPTS" --baseline_prompts 16 \
  --max_new_tokens 64 --lora_r 128 2>&1 | tee "$OUT_DIR/eval_throughput.txt"
