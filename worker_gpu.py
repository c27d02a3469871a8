"""GPU worker: `python worker_gpu.py` (installed: `longsong-worker-gpu`); see longsong/worker.py."""

from longsong.worker import main_gpu

if __name__ == "__main__":
    main_gpu()
