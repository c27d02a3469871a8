"""Write to a temporary name, then rename into place: readers see the old file or the whole new one."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replacing(dest: str | Path, tmp_dir: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path (beside `dest`, or in `tmp_dir` on the same filesystem); when the block
    ends without error it replaces `dest`, otherwise it is removed. Its name has no characters that
    ffmpeg's tee muxer would read as syntax."""
    dest = Path(dest)
    tmp = Path(tmp_dir or dest.parent) / f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
