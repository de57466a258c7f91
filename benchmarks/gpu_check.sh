#!/usr/bin/env bash
# GPU checks of captcha_ml on a CUDA machine, in one go (a rented GPU's minutes are few):
#   1. `captcha-ml fit` on the wheezy development style with a short budget, the probe timing the
#      GPU: zero-shot, steps run and the 1000-image holdout (benchmarks/fit_styles.py);
#   2. seed-scale pretraining (experiments/pretrain_gpu.yaml: layer3, batch 128, bf16, 8 loader
#      workers) for a few hundred steps, run directly: training images/s;
#   3. the same under `accelerate launch` (one process, bf16);
#   4. the test suite with CUDA visible (training, resuming, predicting, serving on the GPU), in
#      TEST_WORKERS pytest-xdist processes, for at most TEST_SECONDS.
# Usage: bash benchmarks/gpu_check.sh WORK [FIT_BUDGET_MINUTES] [STEPS]
# Each step has a time limit and the script goes on after a failure; grep its output for "==".
set -uo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: gpu_check.sh WORK [FIT_BUDGET_MINUTES] [STEPS]}
BUDGET=${2:-4}
STEPS=${3:-300}
PY=${PYTHON:-python3}
mkdir -p "$W"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5
uri="sqlite:///$W/mlflow.db"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
"$PY" -c "import sys, torch, torchvision, accelerate, mlflow
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available(), 'torchvision', torchvision.__version__,
      'accelerate', accelerate.__version__, 'mlflow', mlflow.__version__)"

echo "== fit wheezy, budget $BUDGET min"
start=$(date +%s)
keep="^(precision|budget|synthetic pools|model input|pretrain:|zero-shot|train\.|finetune:|test"
keep="$keep|time|wheezy|style )"
timeout $(( ${BUDGET%.*} * 60 + 180 )) "$PY" benchmarks/fit_styles.py --work "$W/fit" \
    --styles wheezy --budget-minutes "$BUDGET" 2>&1 | tee "$W/fit.log" | tr '\r' '\n' \
    | grep -E "$keep" | grep -vE "step/s|img/s"
echo "== fit: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s"

pretrain=(train experiments/pretrain_gpu.yaml
          --set "train.max_steps=$STEPS" --set "train.eval_every=$STEPS"
          --set data.synthetic_valid_size=1024 --set "tracking.tracking_uri=$uri")
echo "== pretrain_gpu.yaml, $STEPS steps, one process"
start=$(date +%s)
timeout 150 "$PY" -m captcha_ml "${pretrain[@]}" --set "train.output_dir=$W/pretrain_gpu" \
    2>&1 | tr '\r' '\n' | grep -E "img/s=|^best validation|Error:" | tail -n 3
echo "== one process: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s"

echo "== pretrain_gpu.yaml, $STEPS steps, accelerate launch (1 process, bf16)"
start=$(date +%s)
timeout 150 "$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
    --mixed_precision bf16 --dynamo_backend no -m captcha_ml "${pretrain[@]}" \
    --set "train.output_dir=$W/pretrain_gpu_launch" \
    2>&1 | tr '\r' '\n' | grep -E "img/s=|^best validation|Error:" | tail -n 3
echo "== accelerate launch: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s"

echo "== tests (CUDA visible)"
start=$(date +%s)
timeout "${TEST_SECONDS:-150}" "$PY" -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-8}" \
    -rf 2>&1 | tail -n 25
echo "== tests: exit ${PIPESTATUS[0]} in $(( $(date +%s) - start )) s"
