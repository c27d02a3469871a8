"""Temporary files: written under a temporary name, then renamed into place (readers see the old file or the
whole new one), and named after their writer so that a sweeper can tell a crashed process's leftovers.

Every temporary name holds a writer tag `pid{pid}-{start}-{host}`: the writing process's id, its start time
(clock ticks since boot, from /proc; 0 where there is none) and a hash of the host name. An entry is stale when
its writer is gone (same host, and that pid is not alive or is a later process with the same id) or when it is
older than a day, whoever wrote it. `sweep(folder)` removes the stale entries of a folder; the workers sweep the
data dir's `tmp/` and the file store's `.tmp/` at start (`longsong.worker.serve`).

Temporary folders (`temp_dir`) live under `temp_root()`: `$LONGSONG_HOME/tmp` once the process has called
`set_temp_root(settings.home / "tmp")` (workers do), else the default data dir's - never the system /tmp.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STALE_AFTER_S = 24 * 3600  # anything older than this is stale, whoever wrote it
_TAG_RE = re.compile(r"pid(\d+)-(\d+)-([0-9a-f]{8})-[0-9a-f]+")
_root: Path | None = None
_tag: tuple[int, str] | None = None  # (pid it was computed in, tag): recomputed after a fork


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def process_start(pid: int) -> str | None:
    """The start time of process `pid` as text (clock ticks since boot on Linux, "0" where /proc is missing);
    None when no such process is alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None  # Linux: no such process
    except OSError:
        return None
    else:
        fields = stat[stat.rindex(")") + 2:].split()
        return None if fields[0] in ("Z", "X") else fields[19]  # field 3 is the state, field 22 the start time
    try:  # no /proc (macOS): the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "0"


def writer_tag() -> str:
    """`pid{pid}-{start}-{host}` of this process."""
    global _tag
    pid = os.getpid()
    if _tag is None or _tag[0] != pid:
        _tag = (pid, f"pid{pid}-{process_start(pid) or 0}-{_host()}")
    return _tag[1]


def temp_name(stem: str) -> str:
    """`{stem}-{writer tag}-{random}`: unique, and tells `sweep` who wrote it. No characters that ffmpeg's
    tee muxer would read as syntax."""
    return f"{stem}-{writer_tag()}-{uuid.uuid4().hex[:12]}"


def set_temp_root(path: str | Path) -> Path:
    """Where `temp_dir` puts its folders from now on in this process (workers: `settings.home / "tmp"`)."""
    global _root
    root = Path(path).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    _root = root
    return root


def temp_root() -> Path:
    if _root is not None:
        return _root
    from longsong.settings import Settings

    return Settings.home / "tmp"  # the default data dir's (Settings' class default: no environment read)


@contextmanager
def temp_dir(stem: str, root: str | Path | None = None) -> Iterator[Path]:
    """A fresh folder `{root}/{stem}-{writer tag}-{random}` (root: `temp_root()`), removed with its content
    when the block ends; left behind only when the process dies, for `sweep` to remove."""
    base = Path(root) if root is not None else temp_root()
    base.mkdir(parents=True, exist_ok=True)
    path = base / temp_name(stem)
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def replacing(dest: str | Path, tmp_dir: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path (beside `dest`, or in `tmp_dir` on the same filesystem); when the block
    ends without error it replaces `dest`, otherwise it is removed. Its name (`.{name}.{writer tag}-….tmp`)
    has no characters that ffmpeg's tee muxer would read as syntax."""
    dest = Path(dest)
    tmp = Path(tmp_dir or dest.parent) / f".{temp_name(dest.name)}.tmp"
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def is_stale(path: str | Path, now: float | None = None, max_age_s: float = STALE_AFTER_S) -> bool:
    """True when `path`'s writer (from its name) is a process of this host that no longer runs, or when
    `path` was last modified more than `max_age_s` ago."""
    path = Path(path)
    try:
        mtime = path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if (time.time() if now is None else now) - mtime > max_age_s:
        return True
    m = _TAG_RE.search(path.name)
    if m is None or m.group(3) != _host():
        return False  # not ours, or another host's writer: only the age tells
    return process_start(int(m.group(1))) != m.group(2)


def sweep(folder: str | Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the stale entries (files or folders) directly inside `folder`; returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    for entry in entries:
        if not is_stale(entry, now, max_age_s):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass
        except OSError:
            continue  # e.g. another sweeper got there first or no permission: leave it
    return removed


def disk_usage(folder: str | Path) -> int:
    """Bytes of the regular files under `folder` (0 when it does not exist)."""
    total = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total
