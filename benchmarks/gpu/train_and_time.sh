#!/usr/bin/env bash
# One device call: smoke-check, train NSIDL (one or several configs side by side on the one GPU)
# for a fixed wall budget, validate, keep the candidate with the best validation score
# (XSIM - NRMSE/100 on the held-out validation heads), time its inference, run the gpu tests.
# Everything the lead needs lands in $OUT.
#
#   run(command="CONFIGS='qsmprep/data/nsidl/train_gpu_v2a.yaml qsmprep/data/nsidl/train_gpu_v2b.yaml' TRAIN_MIN=6.5 bash benchmarks/gpu/train_and_time.sh",
#       carry=[".nsidl_val"], timeout_s=590)
# (.nsidl_val from benchmarks/gpu/make_val_heads.py.)  The v1 run was
#   TRAIN_MIN=6.0 CONFIGS=qsmprep/data/nsidl/train_gpu.yaml bash benchmarks/gpu/train_and_time.sh
#
# Env: TRAIN_MIN (training wall budget per config, minutes, default 6.0), CONFIGS (YAML files,
# space-separated; trained concurrently), OUT (output dir), SKIP_EXTRAS=1 (no smoke test, timing or
# gpu tests: a follow-up call on a warm machine with the same architecture).
set -u
OUT=${OUT:-/tmp/nsidl_out}
mkdir -p "$OUT"
TRAIN_MIN=${TRAIN_MIN:-6.0}
CONFIGS=${CONFIGS:-qsmprep/data/nsidl/train_gpu.yaml}
PY=${PY:-python3}
DEV=${DEV:-cuda}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
LOG="$OUT/device_log.txt"
{
  echo "== $(date -u) host $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, numpy, scipy, yaml, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  FIRST=${CONFIGS%% *}
  [ "${SKIP_EXTRAS:-0}" = 1 ] || {
  echo "== smoke (3 tiny steps, $FIRST)"
  $PY -m qsmprep.dl.train --config "$FIRST" --out /tmp/nsidl_smoke --device "$DEV" --max-steps 3 \
      --set data.max_voxels=200000 --set log_every=1 --set val.every=2 --set val.max_heads=1 || { echo "SMOKE FAILED"; exit 3; }; }
  echo "== train ${TRAIN_MIN} min: $CONFIGS"
  pids=()
  for c in $CONFIGS; do
    n=$(basename "$c" .yaml)
    $PY -m qsmprep.dl.train --config "$c" --out "/tmp/nsidl_run_$n" --device "$DEV" --max-minutes "$TRAIN_MIN" \
        > "$OUT/train_stdout_$n.txt" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || echo "a training run failed (pid $p)"; done
  for c in $CONFIGS; do
    n=$(basename "$c" .yaml)
    cp "/tmp/nsidl_run_$n/nsidl.pt" "$OUT/nsidl_$n.pt" 2>/dev/null
    cp "/tmp/nsidl_run_$n/train_log.jsonl" "$OUT/train_log_$n.jsonl" 2>/dev/null
    cp "/tmp/nsidl_run_$n/summary.json" "$OUT/summary_$n.json" 2>/dev/null
    tail -3 "$OUT/train_stdout_$n.txt"
  done
  echo "== pick"
  BEST=$($PY - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for f in sorted(out.glob("summary_*.json")):
    s = json.loads(f.read_text())
    score = (s.get("val_xsim") or 0) - (s.get("val_nrmse") or 1e9) / 100
    rows.append((score, f.name[len("summary_"):-5], s.get("val_xsim"), s.get("val_nrmse"), s.get("best_step"), s.get("steps")))
    print(f"{rows[-1][1]}: score {score:.4f} xsim {s.get('val_xsim')} nrmse {s.get('val_nrmse')} best_step {s.get('best_step')} of {s.get('steps')}", file=sys.stderr)
print(max(rows)[1] if rows else "")
PYEOF
)
  echo "best: $BEST"
  cp "$OUT/nsidl_$BEST.pt" "$OUT/nsidl_best.pt" 2>/dev/null
  [ "${SKIP_EXTRAS:-0}" = 1 ] && { echo "== end $(date -u)"; exit 0; }
  echo "== timing"
  $PY benchmarks/gpu/time_inference.py --weights "$OUT/nsidl_best.pt" --out "$OUT/timing.json" --device "$DEV" --repeats 3 || echo "TIMING FAILED"
  echo "== gpu tests"
  QSMPREP_NSIDL_WEIGHTS="$OUT/nsidl_best.pt" $PY -m pytest -q --noconftest -p no:cacheprovider -m gpu tests/test_dl_inference.py tests/test_dl_physics.py 2>&1 | tail -5
  echo "== end $(date -u)"
} 2>&1 | tee "$LOG"
