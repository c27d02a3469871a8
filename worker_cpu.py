"""CPU worker: `python worker_cpu.py` (installed: `longsong-worker-cpu`); see longsong/worker.py."""

from longsong.worker import main_cpu

if __name__ == "__main__":
    main_cpu()
