"""Entry-point plumbing shared by the CLI and both workers: how a process ends.

The Temporal client's Rust threads can outlive the asyncio loop and abort CPython's finalization
(temporalio/sdk-python#300: "PyGILState_Release ... finalizing", exit -6 or -11 after the work
was done and printed). Once the Temporal bridge is loaded, a finished process therefore flushes
its output and leaves without interpreter teardown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Awaitable, Callable, NoReturn


def exit_process(code: int) -> NoReturn:
    if "temporalio.bridge.temporal_sdk_bridge" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run_worker(name: str, serve: Callable[[], Awaitable[None]],
               startup_errors: tuple[type[BaseException], ...]) -> NoReturn:
    """Run a worker's `serve()`; a known start-up failure is one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve())
    except startup_errors as e:
        print(f"{name}: {e}", file=sys.stderr)
        exit_process(2)
    exit_process(0)
