#!/usr/bin/env bash
# Everything a lent GPU machine measures, in one call (about 8 minutes on an H200):
#   1. python -m harness.bench --gpu at SD 2.1 scale, bf16 autocast: every method's step
#      (step time, peak memory, img/s, MFU) beside the hand-written loop;
#   2. the same, the distillation step only, in fp32 (the authors' arithmetic, sweep=paper_sd21);
#   3. python -m harness.bench.gpu_cell: one paper_sd21 cell at SD 2.1's size against what the
#      plan predicted for it, the plan calibrated by 1 and 2.
# Figures go to $DEST (default docs/bench) and the log to $DEST/lent_gpu.log. Where the machine
# lacks this project's pure-Python packages they come from .gpu/site.tar.gz (made here by
# `make gpu-carry`). ARCH=toy DEVICE=cpu runs the same three at toy size on a CPU (tests).
set -uo pipefail
cd "$(dirname "$0")/../.."
DEST=${DEST:-docs/bench} ARCH=${ARCH:-sd21} DEVICE=${DEVICE:-cuda} PY=${PYTHON:-python3}
mkdir -p "$DEST"
exec > >(tee "$DEST/lent_gpu.log") 2>&1
# private temporary folders, both removed at the end: the packages, and the steps' own, emptied
# after each step (a step stopped at its limit leaves its checkpoints behind, 2.7-3.7 GB each at
# SD 2.1's size, and the lent machine's disk is small)
site=$(mktemp -d)
export TMPDIR=$(mktemp -d)
trap 'rm -rf "$TMPDIR" "$site"' EXIT
if [ -f .gpu/site.tar.gz ]; then
  tar -xzf .gpu/site.tar.gz -C "$site" && export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
$PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
SCALE=()
[ "$ARCH" = toy ] && SCALE=(--repeats 1 --warmup 5 --window 10 --log-every 5 data.finetune_size=64 data.concept_size=16 data.heldout_size=8 finetune.batch_size=4 finetune.warmup_steps=0)
status=0
# each step within its own limit, so that one that hangs leaves the others their time
step() {
  local limit=$1; shift; echo "== $* ($(date +%T); $(df -h --output=avail "$TMPDIR" | tail -1) free)"
  timeout "$limit" "$@" || { echo "== FAILED ($?): $*"; status=1; }
  rm -rf "${TMPDIR:?}"/*
}
step 260 $PY -m harness.bench --gpu --arch "$ARCH" --device "$DEVICE" --ratio 0.25 --dest "$DEST" "${SCALE[@]}"
step 120 $PY -m harness.bench --gpu --arch "$ARCH" --device "$DEVICE" --ratio 0.25 --only distill --dest "$DEST" "${SCALE[@]}" train.precision=fp32
CELL=(--steps 150)
[ "$ARCH" = toy ] && CELL=(--steps 4 --batch 2 --images 8)
step 210 $PY -m harness.bench.gpu_cell --arch "$ARCH" --device "$DEVICE" --dest "$DEST" "${CELL[@]}"
echo "== done ($(date +%T)), status $status"
exit $status
