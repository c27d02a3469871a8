"""Settings read from the environment (every one is listed in the README)."""

from __future__ import annotations

import os
from pathlib import Path

GPU_QUEUE_DEFAULT = "longsong-gpu"
CPU_QUEUE_DEFAULT = "longsong-cpu"
DEV_WATERMARK_KEY = "longsong-dev-watermark-key"

# Custom search attributes shown in the Temporal Web UI (name -> type for `temporal ... --search-attribute`).
SEARCH_ATTRIBUTES = {
    "LongsongStage": "Keyword",
    "LongsongProgress": "Int",
    "LongsongUserId": "Keyword",
    "LongsongEngine": "Keyword",
}
# The dev server's SQLite file in WAL mode without an fsync per commit: a crashed server or worker
# still loses nothing (the log is in the OS), only a power cut can drop the last moments; each
# history write costs no disk flush, which is ~0.3 s of a 13-segment song here.
DEV_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")


def dev_server_args() -> list[str]:
    """`temporal server start-dev` options shared by `longsong dev up` and the tests' server."""
    args = [arg for pragma in DEV_SQLITE_PRAGMAS for arg in ("--sqlite-pragma", pragma)]
    for name, kind in SEARCH_ATTRIBUTES.items():
        args += ["--search-attribute", f"{name}={kind}"]
    return args


def home() -> Path:
    """Data dir: dev-server database, logs, local objects (LONGSONG_HOME, default ~/.longsong)."""
    return Path(os.environ.get("LONGSONG_HOME") or Path.home() / ".longsong").expanduser()


def gpu_queue() -> str:
    return os.environ.get("LONGSONG_GPU_QUEUE", GPU_QUEUE_DEFAULT)


def cpu_queue() -> str:
    """Also the workflow task queue: the CPU worker runs the (light) workflow code."""
    return os.environ.get("LONGSONG_CPU_QUEUE", CPU_QUEUE_DEFAULT)


def watermark_key() -> bytes:
    """Secret for the watermark; from config only, never in workflow history."""
    return os.environ.get("LONGSONG_WATERMARK_KEY", DEV_WATERMARK_KEY).encode()


def keep_scratch() -> bool:
    return os.environ.get("LONGSONG_KEEP_SCRATCH", "").lower() in ("1", "true", "yes")


def ui_url() -> str:
    """Temporal Web UI base URL for links (LONGSONG_UI_URL; default the dev server's UI port)."""
    return os.environ.get("LONGSONG_UI_URL") or f"http://localhost:{os.environ.get('LONGSONG_DEV_UI_PORT', '8233')}"
