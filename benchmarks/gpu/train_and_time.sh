#!/usr/bin/env bash
# One device call: smoke-check, train NSIDL for a fixed wall budget, validate, time inference,
# run the gpu-marked tests.  Everything the lead needs lands in $OUT (<= 8 files).
#
#   run(command="TRAIN_MIN=6.0 bash benchmarks/gpu/train_and_time.sh", carry=[".nsidl_val"], timeout_s=570)
# (.nsidl_val from benchmarks/gpu/make_val_heads.py; add ".nsidl_init" to carry only for the
#  warm-start config qsmprep/data/nsidl/train_gpu_run2_warmstart.yaml)
#
# Env: TRAIN_MIN (training wall budget, minutes, default 6.0), CONFIG (YAML), OUT (output dir).
set -u
OUT=${OUT:-/tmp/nsidl_out}
mkdir -p "$OUT"
TRAIN_MIN=${TRAIN_MIN:-6.0}
CONFIG=${CONFIG:-qsmprep/data/nsidl/train_gpu.yaml}
PY=${PY:-python3}
DEV=${DEV:-cuda}
RUN=/tmp/nsidl_run
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
LOG="$OUT/device_log.txt"
{
  echo "== $(date -u) host $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, numpy, scipy, yaml, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  echo "== smoke (3 tiny steps)"
  $PY -m qsmprep.dl.train --config "$CONFIG" --out /tmp/nsidl_smoke --device "$DEV" --max-steps 3 \
      --set data.max_voxels=200000 --set log_every=1 --set val.every=2 --set val.max_heads=1 || { echo "SMOKE FAILED"; exit 3; }
  echo "== train ${TRAIN_MIN} min"
  $PY -m qsmprep.dl.train --config "$CONFIG" --out "$RUN" --device "$DEV" --max-minutes "$TRAIN_MIN" || { echo "TRAIN FAILED"; }
  cp "$RUN/nsidl.pt" "$OUT/nsidl_v1.pt" 2>/dev/null
  cp "$RUN/train_log.jsonl" "$OUT/train_log.jsonl" 2>/dev/null
  cp "$RUN/summary.json" "$OUT/summary.json" 2>/dev/null
  cp "$RUN/ckpt.pt" "$OUT/ckpt.pt" 2>/dev/null
  echo "== timing"
  $PY benchmarks/gpu/time_inference.py --weights "$OUT/nsidl_v1.pt" --out "$OUT/timing.json" --device "$DEV" --repeats 3 || echo "TIMING FAILED"
  echo "== gpu tests"
  QSMPREP_NSIDL_WEIGHTS="$OUT/nsidl_v1.pt" $PY -m pytest -q --noconftest -p no:cacheprovider -m gpu tests/test_dl_inference.py tests/test_dl_physics.py 2>&1 | tail -5
  echo "== end $(date -u)"
} 2>&1 | tee "$LOG"
