#!/usr/bin/env bash
# CI: the GPU plan test (tests/test_bench_plan.py) in a venv with the gpu extra, on a machine
# without a GPU: jax[cuda12] compiles for compile-only H100 devices.
#
#   bash bench/ci_plan.sh [VENV_DIR]     # default: ${TMPDIR:-/tmp}/openrs-jax-gpu-ci (reused if present)
#
# PYTHON picks the interpreter that creates the venv (default python3). Fails if the H100 plan
# test is skipped (it is skipped only where jax[cuda12] did not install).
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${1:-${TMPDIR:-/tmp}/openrs-jax-gpu-ci}
PYTHON=${PYTHON:-python3}
LOG=$(mktemp)
start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -e ".[gpu]" pytest
installed=$(date +%s)
# No GPU here: skip the CUDA plugin's driver version check so it can make compile-only devices.
export JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
"$VENV/bin/python" -m pytest -q -rs tests/test_bench_plan.py 2>&1 | tee "$LOG" || status=1
end=$(date +%s)
if grep -q "SKIPPED.*no compile-only GPU devices" "$LOG"; then
  echo "ci_plan: the H100 plan test was skipped: jax[cuda12] is not usable in $VENV" >&2
  status=1
fi
rm -f "$LOG"
echo "ci_plan: install $((installed - start)) s, tests $((end - installed)) s"
exit $status
