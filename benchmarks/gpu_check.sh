#!/usr/bin/env bash
# GPU check (issue 12): stock MusicGen generate vs the engine's decode loop (ms/step) and greedy equality.
# Needs only torch, transformers and numpy for $PYTHON (default python3); the repo goes on PYTHONPATH here,
# nothing is installed. The machine and progress on stderr, the table on stdout; at most 6 minutes on one
# H100. `--cpu-smoke`: tiny models on CPU (tests/test_gpu_check.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT"
{
  echo "== machine: $(uname -srm), $(nproc) cpus"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
  fi
  # versions from the package metadata: importing torch and transformers twice would cost seconds
  "$PY" -c 'import sys
from importlib.metadata import version
print("== python", sys.version.split()[0], *(f"| {p} {version(p)}" for p in ("torch", "transformers", "numpy")))'
} >&2
exec "$PY" "$ROOT/benchmarks/gpu_check.py" "$@"
