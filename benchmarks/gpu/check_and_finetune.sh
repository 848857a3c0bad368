#!/usr/bin/env bash
# One device call (session 4, about 9 minutes): first what only a GPU can check for the shipped
# weights (benchmarks/gpu/check_presets.sh: CPU/GPU agreement tests and GPU time of both data-fit
# presets), then, in the time left before DEADLINE_S, fine-tune the shipped weights with the
# presets in the loss (qsmprep/data/nsidl/train_gpu_v4.yaml), then the CPU/GPU agreement and GPU time
# of the candidate.  Everything lands in $OUT (at most 7 files: the device can return 8).
#   run(command="bash benchmarks/gpu/check_and_finetune.sh", carry=[".nsidl_val"], timeout_s=560)
# Env: DEADLINE_S (seconds from the start by which everything should end, default 520),
#      DEV (cuda), PY (python3), TRAIN_SET (extra --set KEY=VALUE for a dry run), SKIP_CHECK=1.
set -u
T0=$(date +%s)
OUT=${OUT:-/tmp/qsmprep_gpu}
mkdir -p "$OUT"
export PY=${PY:-python3} PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}"
DEV=${DEV:-cuda}
DEADLINE_S=${DEADLINE_S:-520}
{
  echo "== $(date -u) host $(hostname)"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ "${SKIP_CHECK:-0}" != 1 ]; then
    echo "== shipped weights: gpu tests + timing (check_presets.sh)"
    OUT="$OUT" timeout 240 bash benchmarks/gpu/check_presets.sh || echo "CHECK_PRESETS FAILED rc=$?"
    cat "$OUT/pytest_gpu.txt" 2>/dev/null
  fi
  left=$(( DEADLINE_S - ($(date +%s) - T0) - 110 ))
  mins=$(python3 -c "print(max(0.5, $left / 60))")
  echo "== fine-tune for $mins min (elapsed $(( $(date +%s) - T0 )) s)"
  # shellcheck disable=SC2086
  timeout $(( left + 80 )) $PY -m qsmprep.dl.train --config qsmprep/data/nsidl/train_gpu_v4.yaml --out /tmp/nsidl_v4 \
      --device "$DEV" --max-minutes "$mins" ${TRAIN_SET:-} > "$OUT/train_stdout_v4.txt" 2>&1 || echo "TRAINING FAILED rc=$?"
  tail -n 4 "$OUT/train_stdout_v4.txt"
  grep -E "val NRMSE|exporting|start\)" "$OUT/train_stdout_v4.txt" | tail -n 20
  cp /tmp/nsidl_v4/nsidl.pt "$OUT/nsidl_v4.pt" 2>/dev/null
  cp /tmp/nsidl_v4/train_log.jsonl "$OUT/train_log_v4.jsonl" 2>/dev/null
  rm -f "$OUT/train_stdout_v4.txt"  # its useful lines are in this log (device returns at most 8 files)
  if [ -f "$OUT/nsidl_v4.pt" ] && [ "$DEV" = cuda ]; then
    echo "== candidate: CPU/GPU agreement and GPU time, both presets (elapsed $(( $(date +%s) - T0 )) s)"
    timeout 100 $PY benchmarks/gpu/time_inference.py --weights "$OUT/nsidl_v4.pt" --out "$OUT/timing_v4.json" \
        --device cuda --repeats 2 --data-fit robust strong || echo "CANDIDATE TIMING FAILED"
  fi
  echo "== end $(date -u), elapsed $(( $(date +%s) - T0 )) s"
} 2>&1 | tee "$OUT/device_log.txt"
