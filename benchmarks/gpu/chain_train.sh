#!/usr/bin/env bash
# One device call (issue #13): train NSIDL *through the chain's final fit* and bring back weights, logs, timing.
#
#   run(command="bash benchmarks/gpu/chain_train.sh", timeout_s=590)      # nothing to carry
#
# 1. chain samples made on the device's CPU cores (the data stay there: the carry limit is 64 MiB): drawn
#    qsmprep.sim heads at 1.5 mm through the app's chain up to its final fit, with that fit's inputs
#    (benchmarks/chain_finetune.py --through-fit; training seeds 1000+, held-out seeds 1900+ to pick the checkpoint);
# 2. fine-tune the shipped weights on the GPU with the loss after the final fit (train_step_through_fit: the
#    differentiable fit of qsmprep.dl.finalfit), the unrolled step sizes frozen (the ablation stays the shipped one's);
# 3. time the whole NSIDL chain inversion on the GPU (benchmarks/gpu/time_inference.py) and run the GPU tests.
# The candidates (step*.pt, best.pt) are then judged on the CPU through the whole chain on the validation heads
# (chain_benchmark.py --weights ... --methods nsidl@cand): only a candidate that beats the shipped weights there ships.
#
# Env: TRAIN_MIN (training minutes, default 4), SEEDS (default 1000-1031), HELDOUT (default 1900-1903),
# WORKERS (sample-making processes, 2 threads each; default 7), LR (default 5e-5), VAL_EVERY (default 40),
# ACCUM (training samples per optimiser step, default 1), DEVICE (default cuda; cpu for a dry run before a
# device session, with e.g. SEEDS=1000-1001 HELDOUT=1900 WORKERS=1 TRAIN_MIN=1 TIMING=0).
set -u -o pipefail
OUT=${OUT:-/tmp/chain_train_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
export QSMPREP_CHAIN_SAMPLES=${QSMPREP_CHAIN_SAMPLES:-/tmp/chain_samples}
LOG="$OUT/device_log.txt"
{
  echo "== $(date -u) host $(hostname)"
  nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, scipy, skimage; import qsmprep.dl.finalfit; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
      || { echo "IMPORTS FAILED"; exit 3; }
  t0=$(date +%s)
  echo "== samples: train ${SEEDS:-1000-1031}, held-out ${HELDOUT:-1900-1903}"
  $PY benchmarks/chain_finetune.py --through-fit --voxel 1.5 --workers "${WORKERS:-7}" \
      --make "${SEEDS:-1000-1031}" --make-heldout "${HELDOUT:-1900-1903}" > "$OUT/make_log.txt" 2>&1 \
      || { echo "SAMPLES FAILED"; tail -20 "$OUT/make_log.txt"; exit 4; }
  echo "samples made in $(( $(date +%s) - t0 )) s: $(ls $QSMPREP_CHAIN_SAMPLES | wc -l) files"
  echo "== train ${TRAIN_MIN:-4} min on ${DEVICE:-cuda}, through the final fit"
  $PY benchmarks/chain_finetune.py --through-fit --train --device "${DEVICE:-cuda}" --voxel 1.5 --out /tmp/chain_ft \
      --val-glob "heldout-*_1.5mm_fit.npz" --minutes "${TRAIN_MIN:-4}" --lr "${LR:-5e-5}" \
      --val-every "${VAL_EVERY:-40}" --accum "${ACCUM:-1}" > "$OUT/train_stdout.txt" 2>&1 || echo "TRAINING FAILED"
  cp /tmp/chain_ft/*.pt /tmp/chain_ft/train_log.jsonl /tmp/chain_ft/summary.json "$OUT/" 2>/dev/null
  tail -5 "$OUT/train_stdout.txt"
  if [ "${TIMING:-1}" != 0 ]; then
    echo "== timing (shipped weights, the whole NSIDL chain inversion)"
    timeout 150 $PY benchmarks/gpu/time_inference.py --weights qsmprep/data/nsidl/nsidl_v3.pt --data-fit chain \
        --device "${DEVICE:-cuda}" --out "$OUT/timing.json" 2>&1 | tail -5 || echo "timing failed"
  fi
  echo "== gpu tests"
  timeout 90 $PY -m pytest -q tests/test_finalfit.py tests/test_smvfit.py tests/test_dl_inference.py -k "cuda or finalfit" 2>&1 | tail -3 || true
  echo "== done $(date -u), $(( $(date +%s) - t0 )) s"
} 2>&1 | tee "$LOG"
