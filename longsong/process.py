"""How a longsong process (the CLI, a worker) ends.

The Temporal client's Rust threads can outlive the asyncio loop and abort CPython's finalization
(temporalio/sdk-python#300: "PyGILState_Release ... finalizing", exit -6 or -11 after the work
was done and printed). Once the Temporal bridge is loaded, a finished process therefore flushes
its output and leaves without interpreter teardown.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    if "temporalio.bridge.temporal_sdk_bridge" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
