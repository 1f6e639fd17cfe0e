#!/usr/bin/env bash
# The GPU device check (issue 31), one command, no network: on a machine whose torch
# sees CUDA, the CUDA tests (tests/test_cuda.py: graphs with batches of varying size, two
# pipelines capturing at once, checkpoints between CPU and GPU, a GPU per replica,
# average mode, serving copies, one wait per step), then scripts/bench_gpu.py on fixed
# and varying batches, graphs on and off. Its figures (updates/s and events/s per model
# and batch) go to one file, with the tests' outcome. About 3 minutes on an H100.
#
#   scripts/device_check.sh [OUT.md]        # default: device-check.md
#   scripts/device_check.sh --cpu [OUT.md]  # the smoke run on the CPU (make test runs it)
#
# Uses the Python that holds torch: .venv/bin/python when there is one, else python3
# (the lent GPU machines: CUDA torch, Python 3.12, no registry; this tree is imported
# from here, not installed). PYTHON=... overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=0
if [ "${1:-}" = "--cpu" ]; then cpu=1; shift; fi
out=${1:-device-check.md}
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
json="${out%.md}.json"

if [ "$cpu" = 1 ]; then
  # the same bench code on tiny sizes; the CUDA tests are collected (and skip) in make test
  "$py" scripts/bench_gpu.py --device cpu --seconds 0.02 --batches 32 --no-bf16 --vary \
    --models "${DEVICE_CHECK_MODELS:-ticks}" --out "$out" --json "$json"
  echo "device check (CPU smoke): figures in $out"
  exit 0
fi

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "device check: torch ($py) sees no CUDA device; nothing to check here" \
       "(scripts/device_check.sh --cpu runs the CPU smoke)" >&2
  exit 2
fi

tests_log="${out%.md}.tests.log"
set +e
# -p no:cacheprovider: the tree may be read-only; no xdist: the GPU is one
timeout 110 "$py" -m pytest -p no:cacheprovider -q -rs tests/test_cuda.py tests/test_gpu_logic.py \
  >"$tests_log" 2>&1
tests_rc=$?
set -e
tail -n 15 "$tests_log"

# fixed and varying batches, graphs on and off, bf16 too: 72 figures, ~1.5 minutes;
# the timeouts keep the whole check under 5 minutes
set +e
timeout 170 "$py" scripts/bench_gpu.py --device cuda --seconds 0.75 --batches 256,1024,8192 --vary \
  --out "$out" --json "$json"
bench_rc=$?
set -e

{
  echo
  echo "## Device check: tests"
  echo
  echo "\`pytest tests/test_cuda.py tests/test_gpu_logic.py\` (exit $tests_rc):"
  echo
  echo '```'
  tail -n 15 "$tests_log"
  echo '```'
} >>"$out"
echo "device check: figures and test outcome in $out (raw rows: $json); tests exit" \
     "$tests_rc, bench exit $bench_rc"
[ "$tests_rc" = 0 ] && exit "$bench_rc"
exit "$tests_rc"
