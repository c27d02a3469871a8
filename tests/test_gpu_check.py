"""benchmarks/gpu_check.sh is meant to run unattended the first time a CUDA machine is lent: its --cpu-smoke
mode runs the same code on CPU with tiny models, so a broken script is found here, not on borrowed time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("tiny-s", "tiny-m", "tiny-l")
BATCHES = ("1", "4", "16")


def smoke(*args: str) -> subprocess.CompletedProcess:
    """The script as gpu_check.sh runs it: this venv's python, PYTHONPATH only the repo, one thread."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("|")] for line in out.splitlines() if line.startswith(ARCHS)]


def test_cpu_smoke_fills_the_table_and_the_greedy_codes_equal_stock():
    """Every arch x batch row has a stock and an eager ms/step (the graph is CUDA-only), and the fp32 greedy
    codes of our loop, alone and in a continuous batch, equal stock generate's."""
    done = smoke()
    assert "== python" in done.stderr  # the machine is printed
    header = "arch     batch |     stock fp32 |     eager fp32 |     graph fp32 |  stock/ours fp32"
    assert header in done.stdout.splitlines()
    table = rows(done.stdout)
    assert [tuple(r[0].split()) for r in table] == [(a, b) for a in ARCHS for b in BATCHES]
    for _, stock, eager, graph, ratio in table:
        assert float(stock) > 0 and float(eager) > 0 and graph == "n/a (cpu)" and ratio.endswith("x")
    exact = done.stdout.split("greedy check", 1)[1].split("agreement", 1)[0]
    assert len(re.findall(r" ok \((\d+)/\1 tokens equal\)", exact)) == 2, exact
    assert "MISMATCH" not in done.stdout and "error" not in done.stdout.replace("cell errors 0", "")


def test_past_the_deadline_cells_are_skipped_not_run():
    """A spent budget skips every cell (the table still prints, the run still succeeds) but not the greedy check."""
    done = smoke("--budget-s", "0", "--archs", "tiny-s")
    table = rows(done.stdout)
    assert len(table) == len(BATCHES)
    assert all(cell == "skipped (time)" for r in table for cell in r[1:4]) and all(r[4] == "-" for r in table)
    assert " ok (" in done.stdout
