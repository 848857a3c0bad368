#!/usr/bin/env bash
# One device call (about 3-4 minutes on an H100/H200) that checks what only a GPU can: the
# CPU/GPU agreement tests (pytest -m gpu, both NSIDL data-fit presets included) and the GPU time
# and memory of the shipped weights with each preset on a 1 mm whole-head grid.
#   run: bash benchmarks/gpu/check_presets.sh      (carry .venv if the device machine has none)
# Writes $OUT/timing_presets.json and $OUT/pytest_gpu.txt (OUT defaults to /tmp/qsmprep_gpu).
set -euo pipefail
OUT=${OUT:-/tmp/qsmprep_gpu}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
export PYTHONPATH="$PWD:${PYTHONPATH:-}"  # the device runs the checkout, not an installed qsmprep
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -m pytest -q -p no:cacheprovider -m gpu tests/test_dl_inference.py tests/test_dl_physics.py 2>&1 | tail -15 | tee "$OUT/pytest_gpu.txt" || echo "GPU TESTS FAILED (timing follows)"
$PY benchmarks/gpu/time_inference.py --weights qsmprep/data/nsidl/nsidl_v3.pt --out "$OUT/timing_presets.json" \
    --device cuda --repeats 5 --data-fit robust strong
