#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one short run (about 7 minutes on an H200; pass a timeout
# of 600 s, and leave device time for the machine's start):
#   1. the train stage (TrainerRank, DeepSpeed over NCCL) in ZeRO-0/2/3, fp32 and bf16, against
#      a CPU run's recorded history (scripts/gpu_train_check.py);
#   2. PairRM native vs llm-blender rank(batch_size=1) with DeBERTa-v3-large's shape and the real
#      truncation (1224/412), on typical and on long texts; reward and Selfie judges on CUDA
#      (scripts/bench_judges.py --device cuda).
# vLLM and Ray are not exercised: their CUDA wheels are too large to carry to a machine
# without a package index.
#
# It expects a machine with CUDA torch and transformers 5 already installed, plus:
#   .whl/      wheels of what that machine lacks (deepspeed, llm-blender and their small deps),
#              installed to /tmp/site, never into the system;
#   .gpucase/  from `python scripts/gpu_train_check.py prepare <finished quickstart run> .gpucase`.
# Results go to $OUT (default /tmp/gpu-check): gpu_check.log, train_check.md, judges_*.md.
# GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 runs the same steps small on a CPU machine (a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [ "$DEVICE" = cuda ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 SELFPLAY_CACHE=/tmp/selfplay-cache WANDB_MODE=offline
status=0

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PYTHON" -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__)" || exit 1

echo "== 1. train stage on $DEVICE"
"$PYTHON" scripts/gpu_train_check.py check .gpucase --out /tmp/gpu-train-check || status=1
cp /tmp/gpu-train-check/train_check.md "$OUT/" 2>/dev/null
echo "-- train checks done at ${SECONDS} s"

echo "== 2. judges on $DEVICE"
if [ -n "${GPU_CHECK_SMALL:-}" ]; then
    typical=(--prompts 2 --repeats 1 --budgets 8192)
    long=("${typical[@]}")
else
    typical=(--deberta-v3-large --prompts 32 --repeats 3 --budgets 8192,16384,65536)
    long=(--deberta-v3-large --prompts 8 --repeats 2 --budgets 8192,16384)
fi
common=(--device "$DEVICE" --pairrm-init-range 0.02 --max-lengths 1224,412)
"$PYTHON" scripts/bench_judges.py "${common[@]}" "${typical[@]}" --out "$OUT/judges_typical.md" || status=1
echo "-- typical texts done at ${SECONDS} s"
"$PYTHON" scripts/bench_judges.py "${common[@]}" "${long[@]}" --prompt-words 300 --response-words 400 \
    --out "$OUT/judges_long.md" || status=1

echo "== done in ${SECONDS} s (status $status)"
exit $status
