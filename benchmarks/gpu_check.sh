#!/usr/bin/env bash
# weakseg on a GPU in one call, from a fresh checkout: install (offline where needed), then one table of
# bf16 training steps/s, batched inference images/s and a one-process DDP run (benchmarks/gpu_check.py).
# Without CUDA it runs the same cases at tiny sizes (about a minute on 2 cores).
#
#   bash benchmarks/gpu_check.sh [--tiny] [--out results.json]
#
# On a machine without network access, put the wheels of the missing dependencies in .whl/ first
# (pip download --no-deps ... -d .whl NAME==VERSION); they are installed into /tmp/weakseg-site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import weakseg_cks" 2>/dev/null; then
  if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/weakseg-site .whl/*.whl
    export PYTHONPATH=/tmp/weakseg-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # weakseg itself, with its plugins' entry points; --no-deps keeps pip off the network
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || "$PY" -m pip install -q -e .
fi
exec "$PY" benchmarks/gpu_check.py "$@"
