"""Objects as files under a root folder (the default backend)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from longsong.atomic import replacing, sweep, temp_name
from longsong.storage.base import ObjectInfo, Storage, StorageError, check_key, sha256_file


class FileStorage(Storage):
    """Objects as files under a root folder; written in `{root}/.tmp` (under names `sweep_temporary` can tell
    stale: see longsong.atomic), then renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        try:
            (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
            probe = self.root / ".tmp" / temp_name("probe")
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StorageError(f"storage folder {self.root} is not writable: {e.strerror}") from e

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _publish(self, key: str, write) -> ObjectInfo:
        """Write through `write(tmp_path)` into {root}/.tmp, then rename into place (atomic)."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with replacing(dest, self.root / ".tmp") as tmp:
            write(tmp)
            return ObjectInfo(key, tmp.stat().st_size, sha256_file(tmp))

    def put_file(self, key, path, content_type="application/octet-stream", metadata=None):
        return self._publish(key, lambda tmp: shutil.copyfile(path, tmp))

    def put_bytes(self, key, data, content_type="application/octet-stream", metadata=None):
        return self._publish(key, lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, key):
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.url}")
        return src.read_bytes()

    def get_file(self, key, path):
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.url}")
        shutil.copyfile(src, path)

    def exists(self, key):
        return self._path(key).is_file()

    def list(self, prefix):
        base = self.root
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == base:
                dirnames[:] = [d for d in dirnames if d != ".tmp"]
            for name in filenames:
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete_prefix(self, prefix):
        keys = self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        folder = self.root / prefix.rstrip("/")
        if prefix.endswith("/") and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        return len(keys)

    def link(self, key, expires=None):
        return self._path(key).as_uri()

    def local_path(self, key):
        path = self._path(key)
        return path if path.is_file() else None

    def sweep_temporary(self):
        """Remove what crashed writers left in {root}/.tmp (their process is gone, or it is over a day old)."""
        return [p.name for p in sweep(self.root / ".tmp")]
