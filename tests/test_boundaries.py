"""What each process may import, and one-line failures at worker start."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=120)


def test_workflow_code_imports_nothing_heavy():
    run = python("import sys, workflows, longsong.payloads; "
                 "print(sorted(m for m in ('numpy', 'torch', 'transformers', 'ffmpeg', 'scipy') if m in sys.modules))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_cpu_worker_needs_no_gpu_extras():
    run = python("import sys, worker_cpu; print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False False"


def test_cpu_worker_without_ffmpeg_fails_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "worker_cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "IMAGEIO_FFMPEG_EXE": str(tmp_path / "no-ffmpeg"),
                              "LONGSONG_HOME": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "ffmpeg" in run.stderr and "imageio-ffmpeg" in run.stderr


def test_gpu_worker_with_unknown_engine_fails_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "worker_gpu"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LONGSONG_ENGINES": "procedural,suno", "LONGSONG_HOME": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.strip() == "worker_gpu: LONGSONG_ENGINES: unknown engine 'suno' (allowed: procedural, musicgen)"


def test_bad_storage_url_fails_worker_start(tmp_path):
    run = subprocess.run([sys.executable, "-m", "worker_cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LONGSONG_STORAGE": "ftp://nowhere/x", "LONGSONG_HOME": str(tmp_path)})
    assert run.returncode == 2 and "LONGSONG_STORAGE" in run.stderr and "\n" not in run.stderr.strip()
